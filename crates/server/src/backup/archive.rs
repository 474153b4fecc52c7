//! The archive: a gzip-compressed tar whose entries are hashed as they are written and read.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::Entry;

/// Writes entries, remembering each one's size and SHA-256.
pub struct Writer {
    tar: tar::Builder<GzEncoder<BufWriter<File>>>,
    entries: Vec<Entry>,
}

impl Writer {
    pub fn create(path: &Path) -> anyhow::Result<Writer> {
        // The archive holds the credentials of the data dir: readable by its owner only.
        let file = create_private(path).with_context(|| format!("cannot create {}", path.display()))?;
        // Level 1: the database compresses well at any level; a backup should not take long.
        let gz = GzEncoder::new(BufWriter::with_capacity(1 << 20, file), Compression::fast());
        Ok(Writer {
            tar: tar::Builder::new(gz),
            entries: Vec::new(),
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn add_file(&mut self, name: &str, path: &Path) -> anyhow::Result<()> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.add_open(name, file)
    }

    /// Adds the file if it exists; false if it does not.
    pub fn add_file_if_present(&mut self, name: &str, path: &Path) -> anyhow::Result<bool> {
        match File::open(path) {
            Ok(file) => self.add_open(name, file).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn add_open(&mut self, name: &str, file: File) -> anyhow::Result<()> {
        let len = file.metadata()?.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_mtime(0);
        let mut hashing = Hashing::new(file.take(len));
        self.tar
            .append_data(&mut header, name, &mut hashing)
            .with_context(|| format!("writing {name}"))?;
        anyhow::ensure!(hashing.bytes == len, "{name} changed size while it was read");
        self.entries.push(hashing.entry(name));
        Ok(())
    }

    /// Writes the manifest as the last entry, then finishes and syncs the file.
    pub fn finish(mut self, name: &str, manifest: &[u8]) -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(0);
        self.tar.append_data(&mut header, name, manifest)?;
        let gz = self.tar.into_inner().context("finishing the archive")?;
        let mut out = gz.finish().context("finishing the compression")?;
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().context("syncing the backup")?;
        Ok(())
    }
}

/// Unpacks the archive at `from` under `to`, each entry where `place` puts it (an entry it refuses fails
/// the unpacking). Returns the manifest's bytes (the entry `manifest.json`) and what was found.
pub fn unpack(
    from: &Path,
    to: &Path,
    place: impl Fn(&str) -> Option<PathBuf>,
) -> anyhow::Result<(Vec<u8>, Vec<Entry>)> {
    let file = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file)));
    let mut manifest = None;
    let mut found = Vec::new();
    for entry in tar.entries().context("not a backup (not a tar.gz file)")? {
        let mut entry = entry.context("the archive is damaged")?;
        anyhow::ensure!(
            entry.header().entry_type().is_file(),
            "the archive holds something other than files"
        );
        let name = entry
            .path()
            .context("an entry's name is not readable")?
            .to_str()
            .context("an entry's name is not UTF-8")?
            .to_string();
        if name == "manifest.json" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            manifest = Some(bytes);
            continue;
        }
        let rel = place(&name).with_context(|| format!("unexpected entry {name:?}: not a Confab backup"))?;
        let dest = to.join(&rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut out = create_private(&dest)
            .with_context(|| format!("cannot create {} (twice in the archive?)", dest.display()))?;
        let mut hashing = Hashing::new(&mut entry);
        std::io::copy(&mut hashing, &mut out).with_context(|| format!("unpacking {name}"))?;
        out.sync_all()?;
        found.push(hashing.entry(&name));
    }
    // The tar reader stops at the end-of-archive blocks; reading the compressed stream to its end makes the
    // decoder check the gzip trailer (CRC-32 and length of everything, padding included).
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).context("the archive is damaged")?;
    let manifest = manifest.context("the archive has no manifest: incomplete or not a Confab backup")?;
    Ok((manifest, found))
}

/// A new file only its owner may read (mode 0600 on Unix), as the data dir's credentials are.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// A reader that hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn entry(self, name: &str) -> Entry {
        Entry {
            path: name.to_string(),
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
