//! The master API token: from `CONFAB_API_TOKEN`, else the one stored in the data dir, else a new one
//! generated, stored (mode 0600) and printed once.

use std::path::Path;

use anyhow::Context;

pub const FILE_NAME: &str = "master_token";
pub const MIN_LEN: usize = 16;

pub enum Source {
    Environment,
    Stored,
    /// Newly generated: the caller prints it once.
    Generated,
}

pub fn resolve(env_value: Option<String>, data_dir: &Path) -> anyhow::Result<(String, Source)> {
    if let Some(t) = env_value.filter(|t| !t.is_empty()) {
        anyhow::ensure!(
            t.len() >= MIN_LEN && t.chars().all(|c| c.is_ascii_graphic()),
            "CONFAB_API_TOKEN must be at least {MIN_LEN} printable ASCII characters"
        );
        return Ok((t, Source::Environment));
    }
    let path = data_dir.join(FILE_NAME);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        anyhow::ensure!(
            t.len() >= MIN_LEN,
            "{} is too short; delete it to generate a new token",
            path.display()
        );
        return Ok((t, Source::Stored));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let token = confab_service::auth::generate_token("cfm_");
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, Source::Generated))
}

#[cfg(unix)]
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    std::fs::write(path, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, s1) = resolve(None, dir.path()).unwrap();
        assert!(matches!(s1, Source::Generated));
        let (t2, s2) = resolve(None, dir.path()).unwrap();
        assert!(matches!(s2, Source::Stored));
        assert_eq!(t1, t2);
        let (t3, s3) = resolve(Some("an-explicit-token-123".into()), dir.path()).unwrap();
        assert!(matches!(s3, Source::Environment));
        assert_eq!(t3, "an-explicit-token-123");
        assert!(resolve(Some("short".into()), dir.path()).is_err());
    }
}
