//! Upgrades from every earlier schema: each fixture `tests/fixtures/schema-vNN.sql` (a database as a release
//! of schema version NN left it, see `tests/fixtures/README.md`) is loaded, opened with `SqliteStore::open`
//! (which migrates it), and read back through the `Store` port, then written to. A migration without a
//! fixture fails here, and so does a database of a newer schema than this release knows.

mod support {
    pub mod dataset;
    pub mod expect;
    pub mod fixture;
}

use std::path::Path;
use std::sync::Arc;

use confab_bus::LocalBus;
use confab_domain::bot::ReplyState;
use confab_domain::ports::Store;
use confab_store_sqlite::{
    SqliteConfig, SqliteStore, apply_migrations, latest_version, migrations, pending_migrations, schema_version,
};
use support::dataset::{Features, TEAM, history, populate};
use support::expect::{read_back, write_after};
use support::fixture::{fixture_path, fixtures_dir, load, migrated_to, schema_of};

/// What the schema of a SQLite version had (the migration that brought each).
fn features_at(version: u32) -> Features {
    Features {
        bots: version >= 2,
        providers: version >= 3,
        settings: version >= 4,
        distinct: version >= 5,
        disabled: version >= 6,
        outbox: version >= 7,
        flags: version >= 8,
        leases: version >= 11,
    }
}

fn open(path: &Path) -> SqliteStore {
    match SqliteStore::open(SqliteConfig::new(path), Arc::new(LocalBus::default())) {
        Ok(store) => store,
        Err(e) => panic!("the store opens {}: {e}", path.display()),
    }
}

fn pending_after(version: u32) -> Vec<(u32, &'static str)> {
    migrations()
        .iter()
        .filter(|m| m.version > version)
        .map(|m| (m.version, m.name))
        .collect()
}

/// One fixture: loaded, its schema checked against migrations 1..=NN, migrated by opening it, read back,
/// written to.
async fn upgrade_from(version: u32) {
    let context = format!("schema-v{version:02}.sql");
    let sql = std::fs::read_to_string(fixture_path(version)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    load(&path, &sql, version);
    {
        let loaded = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(
            schema_of(&loaded),
            schema_of(&migrated_to(version)),
            "{context}: the fixture's schema is the one migrations 1..={version} create"
        );
    }
    assert_eq!(schema_version(&path).unwrap(), version, "{context}");
    assert_eq!(
        pending_migrations(&path).unwrap(),
        pending_after(version),
        "{context}: pending"
    );

    let store = open(&path);
    assert_eq!(schema_version(&path).unwrap(), latest_version(), "{context}: migrated");
    assert_eq!(
        pending_migrations(&path).unwrap(),
        [],
        "{context}: nothing pending once open"
    );
    {
        let upgraded = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(
            schema_of(&upgraded),
            schema_of(&migrated_to(latest_version())),
            "{context}: the upgraded schema is a new database's"
        );
    }
    read_back(&store, features_at(version), &context).await;
    // A restart's sweep ends the reply left generating (a reply only where the schema had reply states).
    let bots = features_at(version).bots;
    assert_eq!(
        store.sweep_generating().await.unwrap(),
        u64::from(bots),
        "{context}: swept"
    );
    let left = history(&store, TEAM).await.remove(12);
    assert_eq!(left.text, "partial answ", "{context}");
    assert_eq!(
        left.reply.map(|r| r.state),
        bots.then_some(ReplyState::Interrupted),
        "{context}"
    );
    write_after(&store, &context).await;
    drop(store);
    // Opened again, the data is all there: nothing was migrated twice.
    let store = open(&path);
    assert_eq!(history(&store, TEAM).await.len(), 15, "{context}: after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_earlier_schema_upgrades_and_reads_back() {
    let mut tested = 0;
    for version in 1..=latest_version() {
        if fixture_path(version).exists() {
            upgrade_from(version).await;
            tested += 1;
        }
    }
    assert!(tested > 0, "no fixture in {}", fixtures_dir().display());
}

#[test]
fn every_migration_has_a_fixture() {
    let missing: Vec<String> = (1..=latest_version())
        .filter(|v| !fixture_path(*v).exists())
        .map(|v| format!("crates/store-sqlite/tests/fixtures/schema-v{v:02}.sql"))
        .collect();
    assert!(
        missing.is_empty(),
        "missing fixtures: {}.\nEvery migration needs the fixture of its schema (a database of that version, \
         loaded and upgraded by every_earlier_schema_upgrades_and_reads_back). Write it with\n    cargo test -p \
         confab-store-sqlite --test upgrades -- --ignored generate_missing_fixtures\nand commit it \
         (crates/store-sqlite/tests/fixtures/README.md says what to check).",
        missing.join(", ")
    );
    let extra: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sql"))
        .filter(|name| !(1..=latest_version()).any(|v| *name == format!("schema-v{v:02}.sql")))
        .collect();
    assert!(extra.is_empty(), "fixtures of no migration: {extra:?}");
}

/// A database written by a newer release is refused, by the store and by the read-only checks, and left as
/// it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let newer = latest_version() + 1;
    {
        apply_migrations(&SqliteConfig::new(&path)).unwrap();
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch("CREATE TABLE from_the_future (x INTEGER)").unwrap();
        tx.pragma_update(None, "user_version", newer).unwrap();
        tx.commit().unwrap();
    }
    let message = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        for part in [
            path.display().to_string(),
            format!("schema version {newer}"),
            format!("this release knows schema versions up to {}", latest_version()),
            "Run the newer release, or restore a backup taken by this one".to_string(),
        ] {
            assert!(text.contains(&part), "{part:?} not in: {text}");
        }
    };
    match SqliteStore::open(SqliteConfig::new(&path), Arc::new(LocalBus::default())) {
        Ok(_) => panic!("a newer schema was opened"),
        Err(e) => message(&e),
    }
    message(&pending_migrations(&path).unwrap_err());
    message(&apply_migrations(&SqliteConfig::new(&path)).unwrap_err());
    assert_eq!(schema_version(&path).unwrap(), newer, "left as it was");
}

/// Without a database every migration is pending, and looking creates nothing; `apply_migrations` applies
/// them and says which; looking at a database in use works beside its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_migrations_are_read_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    assert_eq!(schema_version(&path).unwrap(), 0);
    assert_eq!(pending_migrations(&path).unwrap(), pending_after(0));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing created");

    load(&path, &std::fs::read_to_string(fixture_path(9)).unwrap(), 9);
    let before = std::fs::read(&path).unwrap();
    assert_eq!(pending_migrations(&path).unwrap(), pending_after(9));
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");

    let applied = apply_migrations(&SqliteConfig::new(&path)).unwrap();
    assert_eq!(applied, pending_after(9));
    assert_eq!(apply_migrations(&SqliteConfig::new(&path)).unwrap(), []);
    let store = open(&path);
    assert_eq!(pending_migrations(&path).unwrap(), [], "beside a running store");
    assert_eq!(schema_version(&path).unwrap(), latest_version());
    drop(store);
    // Closed (in WAL mode), looking leaves no -wal or -shm file behind.
    let files = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = files();
    assert_eq!(pending_migrations(&path).unwrap(), []);
    assert_eq!(schema_version(&path).unwrap(), latest_version());
    assert_eq!(files(), before, "looking created no file");

    let other = dir.path().join("notes.txt");
    std::fs::write(
        &other,
        "not a database, but long enough to have a header of a hundred bytes, if it were one.",
    )
    .unwrap();
    let err = pending_migrations(&other).unwrap_err().to_string();
    assert!(err.contains("is not a SQLite database"), "{err}");
}

/// Writes the fixture of every schema version that has none yet, from the data set written through the
/// store at the current schema. Existing fixtures are never rewritten: they are what releases left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes missing fixtures; run by hand when a migration is added (tests/fixtures/README.md)"]
async fn generate_missing_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let store = open(&path);
    let written = populate(&store).await;
    let mut wrote = Vec::new();
    for version in 1..=latest_version() {
        let target = fixture_path(version);
        if !target.exists() {
            let sql = support::fixture::fixture_sql(&path, version, &written);
            std::fs::write(&target, sql).unwrap();
            wrote.push(target.display().to_string());
        }
    }
    // The data set reads back as it was written (after the dump: reading back sweeps files and takes a lease).
    read_back(&store, Features::ALL, "the generated data set").await;
    drop(store);
    println!("wrote: {wrote:?}");
}
