//! `confab backup` and `confab restore`, and the scheduled backups of `[backup]`.
//!
//! A backup is one gzip-compressed tar file:
//! - `confab.db`: the SQLite database as of one commit, copied online while the server runs
//!   ([`confab_store_sqlite::backup::snapshot`]); it holds every account, channel, message, bot, provider,
//!   webhook endpoint, setting and the outbox;
//! - `files/<xx>/<id>`: the bytes of every uploaded file the copy has a record of (read after the copy: a
//!   file removed in between is listed as missing in the manifest);
//! - `data/<name>`: the data dir's own files (the master token, NIM's credentials, the node id);
//! - `manifest.json`, last: what the archive holds, with the SHA-256 of every entry.
//!
//! It is written under a temporary name and renamed once complete and synced, so a file with the final
//! name is always whole. A restore unpacks into a new directory beside the target, checks every entry
//! against the manifest and the database's integrity, and only then renames it into place.
//!
//! With `[storage] backend = "postgres"` the database is PostgreSQL's to back up (`docs/operations.md`).

mod archive;
mod schedule;

use std::path::{Path, PathBuf};

use anyhow::Context;
use confab_service::blobs::LocalBlobs;
use serde::{Deserialize, Serialize};

use crate::Config;
use crate::config::{FilesBackend, StorageBackend};

pub use schedule::spawn_scheduled;

pub const FORMAT: &str = "confab-backup";
pub const FORMAT_VERSION: u32 = 1;
/// The data dir's own files a backup keeps (beside the database and the uploaded files).
pub const DATA_FILES: &[&str] = &[
    crate::master_token::FILE_NAME,
    crate::master_token::NIM_FILE_NAME,
    crate::node::FILE_NAME,
];
const DB_FILE: &str = "confab.db";
const MANIFEST: &str = "manifest.json";

/// What a backup holds; the archive's last entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub confab_version: String,
    /// When the database was copied (Unix milliseconds).
    pub created_at: i64,
    pub schema_version: u32,
    pub users: u64,
    pub channels: u64,
    pub messages: u64,
    /// Uploaded files whose bytes are in the archive.
    pub files: u64,
    /// Files the database copy has a record of but whose bytes were gone when read (removed in between), or
    /// kept in an object store (`files_backend = "s3"`: back the bucket up with the provider's tools).
    pub files_not_included: Vec<String>,
    pub files_backend: String,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// One line for the operator.
    pub fn summary(&self) -> String {
        let bytes: u64 = self.entries.iter().map(|e| e.bytes).sum();
        let mut s = format!(
            "schema v{}, {} users, {} channels, {} messages, {} files, {:.1} MiB before compression",
            self.schema_version,
            self.users,
            self.channels,
            self.messages,
            self.files,
            bytes as f64 / (1024.0 * 1024.0)
        );
        if !self.files_not_included.is_empty() {
            s.push_str(&format!(
                "; {} files not included ({})",
                self.files_not_included.len(),
                if self.files_backend == "local" {
                    "removed while the backup ran"
                } else {
                    "kept in the object store"
                }
            ));
        }
        s
    }
}

/// Backs up the data dir of `config` into `to` (which must not exist), while a server may be running on it.
/// Blocking: call it from a blocking thread.
pub fn backup(config: &Config, to: &Path) -> anyhow::Result<Manifest> {
    if config.storage.backend == StorageBackend::Postgres {
        anyhow::bail!(
            "confab backup copies the embedded store; with storage.backend = \"postgres\" back the database up \
             with PostgreSQL's tools (pg_dump for a copy, pg_basebackup with WAL archiving for point-in-time \
             recovery; see docs/operations.md)"
        );
    }
    let db = config.data_dir.join(DB_FILE);
    anyhow::ensure!(
        db.exists(),
        "no database at {}: is the data dir right (--data-dir, or data_dir in the configuration)?",
        db.display()
    );
    anyhow::ensure!(!to.exists(), "{} exists already; name a new file", to.display());
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The copy of the database and the archive being written stay beside the target until done.
    let scratch = tempfile::Builder::new()
        .prefix(".confab-backup-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let copy = scratch.path().join(DB_FILE);
    let snapshot = confab_store_sqlite::backup::snapshot(&db, &copy)?;
    let created_at = confab_domain::now_millis();
    let partial = scratch.path().join("archive.partial");
    let mut out = archive::Writer::create(&partial)?;
    out.add_file(DB_FILE, &copy)?;
    let mut files = 0;
    let mut files_not_included = Vec::new();
    let local_files = config.files.backend == FilesBackend::Local;
    for id in &snapshot.file_ids {
        let stored = local_files.then(|| confab_domain::FileId::parse(id).ok()).flatten();
        let added = match stored {
            Some(id) => {
                let rel = Path::new("files").join(LocalBlobs::relative_path(&id));
                out.add_file_if_present(&rel.to_string_lossy(), &config.data_dir.join(&rel))?
            }
            None => false,
        };
        if added {
            files += 1;
        } else {
            files_not_included.push(id.clone());
        }
    }
    for name in DATA_FILES {
        out.add_file_if_present(&format!("data/{name}"), &config.data_dir.join(name))?;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        confab_version: env!("CARGO_PKG_VERSION").into(),
        created_at,
        schema_version: snapshot.schema_version,
        users: snapshot.users,
        channels: snapshot.channels,
        messages: snapshot.messages,
        files,
        files_not_included,
        files_backend: if local_files { "local" } else { "s3" }.into(),
        entries: out.entries().to_vec(),
    };
    out.finish(MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&partial, to).with_context(|| format!("cannot move the backup to {}", to.display()))?;
    sync_dir(dir);
    Ok(manifest)
}

/// Brings the backup `from` back as the data dir `data_dir`, which must not exist or be empty. Checks every
/// entry against the manifest and the database's integrity before anything appears under `data_dir`.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Manifest> {
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(
            empty,
            "{} is not empty: restore into a new directory (move the old one aside first)",
            data_dir.display()
        );
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".confab-restore-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    let (manifest, found) = archive::unpack(from, staging.path(), |path| {
        // Only the layout a backup writes; anything else (absolute paths, `..`) is refused.
        if path == DB_FILE {
            return Some(PathBuf::from(DB_FILE));
        }
        if let Some(name) = path.strip_prefix("data/") {
            return DATA_FILES.contains(&name).then(|| PathBuf::from(name));
        }
        // `files/<the layout of LocalBlobs>`, and nothing else.
        let (_, id) = path.strip_prefix("files/")?.rsplit_once('/')?;
        let rel = Path::new("files").join(LocalBlobs::relative_path(&confab_domain::FileId::parse(id).ok()?));
        (rel.to_str() == Some(path)).then_some(rel)
    })
    .with_context(|| format!("reading {}", from.display()))?;
    let manifest: Manifest = serde_json::from_slice(&manifest).context("the manifest is not readable")?;
    anyhow::ensure!(
        manifest.format == FORMAT && manifest.format_version <= FORMAT_VERSION,
        "not a backup this release reads (format {} v{})",
        manifest.format,
        manifest.format_version
    );
    let mut expected = manifest.entries.clone();
    let mut found = found;
    expected.sort_by(|a, b| a.path.cmp(&b.path));
    found.sort_by(|a, b| a.path.cmp(&b.path));
    if expected != found {
        let differs: Vec<&str> = expected
            .iter()
            .filter(|e| !found.contains(e))
            .chain(found.iter().filter(|f| !expected.contains(f)))
            .map(|e| e.path.as_str())
            .collect();
        anyhow::bail!("the archive does not match its manifest (damaged or altered): {differs:?}");
    }
    let db = confab_store_sqlite::backup::inspect(&staging.path().join(DB_FILE))?;
    anyhow::ensure!(
        db.schema_version == manifest.schema_version && db.messages == manifest.messages,
        "the database does not match the manifest"
    );
    let staged = staging.keep();
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("cannot replace {}", data_dir.display()))?;
    }
    std::fs::rename(&staged, data_dir)
        .with_context(|| format!("cannot move the restored data to {}", data_dir.display()))?;
    sync_dir(parent);
    Ok(manifest)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
