//! Online copies of the database, for `confab backup` and `confab restore`.
//!
//! A copy is taken with SQLite's online backup in a single step: every page is read under one read
//! transaction, so the copy is the database as of one commit, while the server's writer goes on (WAL lets a
//! reader and the writer work at once, from any process). The copy is then checked and synced.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// What a copy (or a database about to be restored) holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The schema version (`user_version`).
    pub schema_version: u32,
    pub users: u64,
    pub channels: u64,
    pub messages: u64,
    /// The uploaded files the copy has records of; their bytes are kept outside the database.
    pub file_ids: Vec<String>,
}

#[derive(Debug)]
pub struct BackupError(String);

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackupError {}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(rusqlite::Error) -> BackupError {
    move |e| BackupError(format!("{what}: {e}"))
}

/// How long a copy waits while the source is locked (a checkpoint truncating the WAL, a schema change).
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// Copies the database at `source`, in use by a running server or not, into the new file `dest`, and
/// describes the copy. `dest` must not exist.
pub fn snapshot(source: &Path, dest: &Path) -> Result<Snapshot, BackupError> {
    if !source.exists() {
        return Err(BackupError(format!("no database at {}", source.display())));
    }
    if dest.exists() {
        return Err(BackupError(format!("{} exists already", dest.display())));
    }
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail(format_args!("cannot open {}", source.display())))?;
    from.busy_timeout(BUSY_WAIT).map_err(fail("setting the busy timeout"))?;
    let mut to = Connection::open(dest).map_err(fail(format_args!("cannot create {}", dest.display())))?;
    {
        let backup = Backup::new(&from, &mut to).map_err(fail("starting the online backup"))?;
        let started = Instant::now();
        loop {
            // -1: every page in one step, one read transaction: a consistent copy even while writes go on.
            match backup.step(-1).map_err(fail("copying the database"))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked if started.elapsed() < BUSY_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => {
                    return Err(BackupError(format!(
                        "the database stayed locked for {} s ({other:?})",
                        BUSY_WAIT.as_secs()
                    )));
                }
            }
        }
    }
    // The copy keeps the source's WAL mode in its header; make it one self-contained file.
    to.pragma_update(None, "journal_mode", "DELETE")
        .map_err(fail("finishing the copy"))?;
    let snapshot = describe(&to, true)?;
    drop(to);
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| BackupError(format!("cannot sync {}: {e}", dest.display())))?;
    Ok(snapshot)
}

/// Checks a database file before it is brought back (`integrity_check`, a schema this release can open) and
/// describes it.
pub fn inspect(path: &Path) -> Result<Snapshot, BackupError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(fail(format_args!("cannot open {}", path.display())))?;
    describe(&conn, false)
}

fn describe(conn: &Connection, quick: bool) -> Result<Snapshot, BackupError> {
    let check = if quick { "quick_check" } else { "integrity_check" };
    let verdict: String = conn
        .query_row(&format!("PRAGMA {check}"), [], |r| r.get(0))
        .map_err(fail("checking the copy"))?;
    if verdict != "ok" {
        return Err(BackupError(format!("the database is damaged: {verdict}")));
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail("reading the schema version"))?;
    if version > crate::schema::latest_version() as i64 {
        let name = conn.path().filter(|p| !p.is_empty()).unwrap_or("copied").to_string();
        return Err(BackupError(crate::schema::newer_schema(&name, version)));
    }
    if version < 1 {
        return Err(BackupError("the database has no Confab schema".into()));
    }
    let count = |table: &str| -> Result<u64, BackupError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(fail(format_args!("counting {table}")))
    };
    let mut stmt = conn
        .prepare("SELECT id FROM files ORDER BY id")
        .map_err(fail("listing files"))?;
    let file_ids = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(fail("listing files"))?;
    Ok(Snapshot {
        schema_version: version as u32,
        users: count("users")?,
        channels: count("channels")?,
        messages: count("messages")?,
        file_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("live.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, nickname, profile_url, metadata, is_bot, created_at, updated_at)
                 VALUES ('alice', '', '', '{}', 0, 1, 1);
             INSERT INTO files (id, channel_id, uploader_id, name, size, content_type, sha256, created_at)
                 VALUES ('f1', 'c', 'alice', 'a.txt', 3, 'text/plain', '00', 1);",
        )
        .unwrap();
        path
    }

    #[test]
    fn a_copy_taken_while_another_connection_writes_is_one_commit_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let live = database(dir.path());
        let writer = Connection::open(&live).unwrap();
        // A transaction left open by the writer: the copy sees the database before it.
        writer
            .execute_batch(
                "BEGIN; INSERT INTO users (id, nickname, profile_url, metadata, is_bot, created_at, updated_at)
                     VALUES ('bob', '', '', '{}', 0, 1, 1);",
            )
            .unwrap();
        let copy = dir.path().join("copy.db");
        let snap = snapshot(&live, &copy).unwrap();
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(snap.users, 1);
        assert_eq!(snap.file_ids, ["f1"]);
        assert_eq!(snap.schema_version, crate::schema::latest_version());
        assert_eq!(inspect(&copy).unwrap(), snap);
        assert!(
            snapshot(&live, &copy)
                .unwrap_err()
                .to_string()
                .contains("exists already")
        );
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        assert!(inspect(&junk).is_err());
        let empty = dir.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(inspect(&empty).unwrap_err().to_string().contains("no Confab schema"));
        let newer = dir.path().join("newer.db");
        let conn = Connection::open(&newer).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(inspect(&newer).unwrap_err().to_string().contains("schema version 999"));
    }
}
