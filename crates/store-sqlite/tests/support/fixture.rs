//! The schema fixtures: writing one (the generator, run once per version) and loading one.
//!
//! A fixture `schema-vNN.sql` is the database a release of schema version NN held: the schema as migrations
//! 1..=NN create it (their `sqlite_master` text), the rows of the data set projected on the columns that
//! schema has, what releases of that schema left behind that later migrations clean up, and
//! `sqlite_sequence`. Tables first, then the rows, then indexes and triggers (so loading the rows fires no
//! trigger: `file_usage` is loaded as it was).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use confab_store_sqlite::migrations;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::dataset::Written;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture_path(version: u32) -> PathBuf {
    fixtures_dir().join(format!("schema-v{version:02}.sql"))
}

/// A database in memory with migrations 1..=`version` applied, as releases of that version created it.
pub fn migrated_to(version: u32) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    for m in migrations().iter().take_while(|m| m.version <= version) {
        let tx = conn.transaction().unwrap();
        tx.execute_batch(m.sql).unwrap();
        tx.pragma_update(None, "user_version", m.version).unwrap();
        tx.commit().unwrap();
    }
    conn
}

/// Every schema object (type, name, table, SQL), sorted: two databases with the same are the same schema.
pub fn schema_of(conn: &Connection) -> Vec<(String, String, String, Option<String>)> {
    let mut objects: Vec<_> = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    objects.sort();
    objects
}

/// Loads a fixture into a new database file at `path`, with `user_version` = `version`.
pub fn load(path: &Path, sql: &str, version: u32) {
    let mut conn = Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(sql)
        .unwrap_or_else(|e| panic!("fixture v{version:02} does not load: {e}"));
    tx.pragma_update(None, "user_version", version).unwrap();
    tx.commit().unwrap();
}

/// A value as an SQL literal. Text blobs stay readable (`CAST('…' AS BLOB)`).
fn literal(value: ValueRef<'_>) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => quote(std::str::from_utf8(t).expect("text is UTF-8")),
        ValueRef::Blob(b) => match std::str::from_utf8(b) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("CAST({} AS BLOB)", quote(s)),
            _ => format!("X'{}'", b.iter().map(|x| format!("{x:02X}")).collect::<String>()),
        },
    }
}

fn columns(conn: &Connection, table: &str) -> Vec<String> {
    conn.prepare(&format!("PRAGMA table_info({table})"))
        .unwrap()
        .query_map([], |r| r.get::<_, String>(1))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The fixture of schema `version` holding the data of the current-schema database at `current`.
pub fn fixture_sql(current: &Path, version: u32, written: &Written) -> String {
    let schema = migrated_to(version);
    let objects: Vec<(String, String, String)> = schema
        .prepare("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let data = Connection::open_with_flags(current, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out = format!(
        "-- Confab SQLite database of schema version {version}: the schema migrations 1..={version} create, \
         then the data set of\n-- tests/support/dataset.rs as the store writes it. Written once by \
         tests/upgrades.rs generate_missing_fixtures\n-- (see README.md); never regenerated: it is what a \
         release of this version left on disk.\n\n"
    );
    let tables: Vec<&str> = objects
        .iter()
        .filter(|(kind, name, _)| kind == "table" && name != "sqlite_sequence")
        .map(|(_, name, _)| name.as_str())
        .collect();
    for (kind, name, sql) in &objects {
        if kind == "table" && name != "sqlite_sequence" {
            writeln!(out, "{sql};\n").unwrap();
        }
    }
    for table in &tables {
        let cols = columns(&schema, table);
        let list = cols.join(", ");
        let mut stmt = data.prepare(&format!("SELECT {list} FROM {table}")).unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let values: Vec<String> = (0..cols.len()).map(|i| literal(row.get_ref(i).unwrap())).collect();
            writeln!(out, "INSERT INTO {table} ({list}) VALUES ({});", values.join(", ")).unwrap();
        }
    }
    out.push_str(&left_behind(version, written));
    let mut stmt = data
        .prepare("SELECT name, seq FROM sqlite_sequence ORDER BY name")
        .unwrap();
    let sequences: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    out.push_str("\n-- AUTOINCREMENT counters (ids are never reused).\nDELETE FROM sqlite_sequence;\n");
    for (name, seq) in sequences.iter().filter(|(name, _)| tables.contains(&name.as_str())) {
        writeln!(out, "INSERT INTO sqlite_sequence (name, seq) VALUES ('{name}', {seq});").unwrap();
    }
    out.push('\n');
    for (kind, name, sql) in &objects {
        if kind != "table" && name != "sqlite_sequence" {
            writeln!(out, "{sql};").unwrap();
        }
    }
    out
}

/// What releases before migration 10 left behind, which it cleans up: the records of files of deleted
/// channels (and their bytes in `file_usage`), flags of the deleted channels' messages, and the idempotency
/// keys of deleted accounts' messages.
fn left_behind(version: u32, written: &Written) -> String {
    if version >= 10 {
        return String::new();
    }
    let f = &written.gone_file;
    let mut out = String::from("\n-- Left behind by releases before migration 10, which cleans it up.\n");
    writeln!(
        out,
        "INSERT INTO files (id, channel_id, uploader_id, name, size, content_type, sha256, created_at) \
         VALUES ('{}', '{}', 'alice', '{}', {}, '{}', '{}', {});",
        f.id, f.channel_id, f.name, f.size, f.content_type, f.sha256, f.created_at
    )
    .unwrap();
    if version == 9 {
        writeln!(
            out,
            "UPDATE file_usage SET bytes = bytes + {} WHERE owner IN ('*', 'u:alice');",
            f.size
        )
        .unwrap();
    }
    if version >= 8 {
        writeln!(
            out,
            "INSERT INTO flagged_messages (message_id, channel_id, rules, state, flagged_at) \
             VALUES ({}, '{}', '[\"legacy\"]', 'pending', {});",
            written.gone_message.0, f.channel_id, f.created_at
        )
        .unwrap();
    }
    writeln!(
        out,
        "UPDATE messages SET client_msg_id = 'dave-1' WHERE id = {};",
        written.dave_message.0
    )
    .unwrap();
    out
}
