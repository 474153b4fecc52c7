//! Upgrades from every earlier schema: the fixture `tests/fixtures/schema-vNN.sql` (a schema as a release of
//! version NN left it: its tables as migrations 1..=NN create them, then the data set of store-sqlite's
//! `tests/support/dataset.rs` as this store writes it) is loaded into a fresh schema, migrated by connecting
//! a store, and read back through the `Store` port (`expect.rs`, shared with store-sqlite), then written to.
//! Also what `pending_migrations` and `schema_version` read, and the rolling upgrade (an older node on a
//! newer schema).
//!
//! A new migration gets the fixture of its version: `cargo test -p confab-store-postgres --lib
//! upgrade_tests::generate_missing_fixture -- --ignored` writes it when missing (never an existing one).

#[path = "../../store-sqlite/tests/support/dataset.rs"]
mod dataset;
#[path = "../../store-sqlite/tests/support/expect.rs"]
mod expect;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use confab_domain::bot::ReplyState;
use confab_domain::now_millis;
use confab_domain::ports::Store;

use crate::testing::{TestSchema, skip_without_postgres};
use crate::{PostgresStore, apply_migrations, latest_version, migrations, pending_migrations, schema, schema_version};
use dataset::{Features, TEAM, history, populate};
use expect::{read_back, write_after};

fn fixture_path(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/schema-v{version:02}.sql"))
}

async fn connect(schema: &TestSchema) -> PostgresStore {
    PostgresStore::connect(schema.config(), std::sync::Arc::new(confab_bus::LocalBus::default()))
        .await
        .expect("the store connects")
}

/// The schema's shape: columns with their types, indexes, triggers (the schema's name left out).
async fn shape(schema: &TestSchema) -> Vec<String> {
    let admin = schema.admin().await;
    let queries = [
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || \
         coalesce(collation_name, '') || ' ' || coalesce(column_default, '') || ' ' || is_identity \
         FROM information_schema.columns WHERE table_schema = $1",
        "SELECT replace(indexdef, schemaname || '.', '') FROM pg_indexes WHERE schemaname = $1",
        "SELECT event_object_table || ' ' || trigger_name || ' ' || event_manipulation \
         FROM information_schema.triggers WHERE trigger_schema = $1",
    ];
    let mut shape = Vec::new();
    for sql in queries {
        for row in admin.query(sql, &[&schema.name]).await.unwrap() {
            shape.push(row.get::<_, String>(0));
        }
    }
    shape.sort();
    shape
}

/// A fresh schema migrated to `version` by this release's migrations, for its shape.
async fn migrated_to(version: u32) -> TestSchema {
    let schema = TestSchema::create().await;
    let admin = schema.admin().await;
    let mut sql = format!("SET search_path TO {};\n", schema.name);
    sql.push_str(CREATE_RECORD);
    for m in migrations().iter().filter(|m| m.version <= version) {
        sql.push_str(m.sql);
        writeln!(sql, "INSERT INTO confab_schema_migrations VALUES ({}, 0);", m.version).unwrap();
    }
    admin.batch_execute(&sql).await.unwrap();
    schema
}

/// The table of applied migrations, as `schema::migrate_client` creates it.
const CREATE_RECORD: &str =
    "CREATE TABLE confab_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);\n";

async fn load(schema: &TestSchema, version: u32) {
    let sql = std::fs::read_to_string(fixture_path(version)).unwrap();
    let admin = schema.admin().await;
    admin
        .batch_execute(&format!("SET search_path TO {};\n{sql}", schema.name))
        .await
        .unwrap_or_else(|e| panic!("schema-v{version:02}.sql does not load: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_earlier_schema_upgrades_and_reads_back() {
    if skip_without_postgres().await {
        return;
    }
    for version in 1..=latest_version() {
        let context = format!("postgres schema-v{version:02}.sql");
        let schema = TestSchema::create().await;
        load(&schema, version).await;
        let reference = migrated_to(version).await;
        assert_eq!(
            shape(&schema).await,
            shape(&reference).await,
            "{context}: migrations 1..={version}"
        );
        assert_eq!(schema_version(&schema.config()).await.unwrap(), version, "{context}");
        let pending = schema::after(version as i64);
        assert_eq!(
            pending_migrations(&schema.config()).await.unwrap(),
            pending,
            "{context}"
        );

        let store = connect(&schema).await;
        assert_eq!(
            schema_version(&schema.config()).await.unwrap(),
            latest_version(),
            "{context}"
        );
        let latest = migrated_to(latest_version()).await;
        assert_eq!(shape(&schema).await, shape(&latest).await, "{context}: upgraded");
        read_back(&store, Features::ALL, &context).await;
        // The node that generated the reply left it generating and is gone: another node ends it.
        let swept = store.sweep_silent_nodes(now_millis()).await.unwrap();
        assert_eq!(swept.replies, 1, "{context}: the reply left generating");
        let left = history(&store, TEAM).await.remove(12);
        assert_eq!(left.reply.map(|r| r.state), Some(ReplyState::Interrupted), "{context}");
        write_after(&store, &context).await;
    }
}

#[test]
fn every_migration_has_a_fixture() {
    for version in 1..=latest_version() {
        let path = fixture_path(version);
        assert!(
            path.exists(),
            "missing {}: migration {version} has no fixture. Write it with\n    cargo test -p \
             confab-store-postgres --lib upgrade_tests::generate_missing_fixture -- --ignored\n(with PostgreSQL \
             reachable, before any later migration exists) and commit it; see \
             crates/store-sqlite/tests/fixtures/README.md",
            path.display()
        );
    }
}

/// A fresh schema: every migration pending, and looking creates nothing; once migrated, none.
#[tokio::test]
async fn pending_migrations_are_read_without_changing_anything() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let all = schema::after(0);
    assert_eq!(all.len(), migrations().len());
    assert_eq!(pending_migrations(&schema.config()).await.unwrap(), all);
    assert_eq!(schema_version(&schema.config()).await.unwrap(), 0);
    let admin = schema.admin().await;
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "looking created nothing");
    assert_eq!(apply_migrations(&schema.config()).await.unwrap(), all);
    assert_eq!(pending_migrations(&schema.config()).await.unwrap(), []);
    assert_eq!(schema_version(&schema.config()).await.unwrap(), latest_version());
    assert_eq!(apply_migrations(&schema.config()).await.unwrap(), []);
}

/// Rolling upgrades: a node of this release starts on a schema a newer release migrated further (with a
/// warning), and there is nothing for it to apply.
#[tokio::test]
async fn a_newer_schema_is_used_as_it_is() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    apply_migrations(&schema.config()).await.unwrap();
    let newer = latest_version() + 1;
    let admin = schema.admin().await;
    admin
        .execute(
            &format!("INSERT INTO {}.confab_schema_migrations VALUES ($1, 0)", schema.name),
            &[&(newer as i64)],
        )
        .await
        .unwrap();
    assert_eq!(schema_version(&schema.config()).await.unwrap(), newer);
    assert_eq!(pending_migrations(&schema.config()).await.unwrap(), []);
    assert_eq!(apply_migrations(&schema.config()).await.unwrap(), []);
    let store = connect(&schema).await;
    assert!(store.ready().await);
}

/// Writes the fixture of the current version when it is missing: the schema as this release's migrations
/// create it, then the rows of the data set written through the store. Existing fixtures are never
/// rewritten: they are what releases left in the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a missing fixture; run by hand when a migration is added"]
async fn generate_missing_fixture() {
    let version = latest_version();
    let target = fixture_path(version);
    if target.exists() {
        println!("{} exists: nothing to write", target.display());
        return;
    }
    assert!(!skip_without_postgres().await, "the generator needs PostgreSQL");
    let schema = TestSchema::create().await;
    let store = connect(&schema).await;
    populate(&store).await;
    drop(store);
    let admin = schema.admin().await;
    let mut out = format!(
        "-- Confab PostgreSQL schema of version {version}: the tables migrations 1..={version} create, then the \
         data set of\n-- crates/store-sqlite/tests/support/dataset.rs as the store writes it. Written once by \
         upgrade_tests.rs\n-- generate_missing_fixture; never regenerated: it is what a release of this version \
         left in the field.\n-- Load it with the search_path set to an empty schema.\n\n"
    );
    out.push_str(CREATE_RECORD);
    for m in migrations() {
        writeln!(out, "\n-- Migration {}: {}{}", m.version, m.name, m.sql).unwrap();
    }
    out.push_str("\n-- The rows as the store wrote them (replacing the migrations' own).\n");
    let tables = admin
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.oid",
            &[&schema.name],
        )
        .await
        .unwrap();
    for table in tables.iter().map(|r| r.get::<_, String>(0)) {
        let qualified = format!("{}.{table}", schema.name);
        let columns: Vec<(String, bool)> = admin
            .query(
                "SELECT attname::text, attidentity <> '' FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&qualified],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        let values: Vec<String> = names.iter().map(|c| format!("quote_nullable(\"{c}\")")).collect();
        let order: Vec<String> = names.iter().map(|c| format!("\"{c}\"")).collect();
        let rows = admin
            .query(
                &format!(
                    "SELECT concat_ws(', ', {}) FROM {qualified} ORDER BY {}",
                    values.join(", "),
                    order.join(", ")
                ),
                &[],
            )
            .await
            .unwrap();
        let overriding = if columns.iter().any(|(_, identity)| *identity) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        writeln!(out, "DELETE FROM {table};").unwrap();
        for row in rows {
            let values: String = row.get(0);
            writeln!(
                out,
                "INSERT INTO {table} ({}){overriding} VALUES ({values});",
                names.join(", ")
            )
            .unwrap();
        }
    }
    let messages = format!("{}.messages", schema.name);
    let sequence: String = admin
        .query_one("SELECT pg_get_serial_sequence($1, 'id')", &[&messages])
        .await
        .unwrap()
        .get(0);
    let sequence = admin
        .query_one(&format!("SELECT last_value, is_called FROM {sequence}"), &[])
        .await
        .unwrap();
    let (last, called): (i64, bool) = (sequence.get(0), sequence.get(1));
    writeln!(
        out,
        "\n-- Message ids go on after the last one taken.\nSELECT setval(pg_get_serial_sequence('messages', 'id'), \
         {last}, {called});"
    )
    .unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, out).unwrap();
    println!("wrote {}", target.display());
}
