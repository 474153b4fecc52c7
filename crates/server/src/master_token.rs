//! The master API token: from `CONFAB_API_TOKEN`, else the one stored in the data dir, else a new one
//! generated, stored (mode 0600) and printed once.

use std::path::Path;

use anyhow::Context;

pub const FILE_NAME: &str = "master_token";
pub const MIN_LEN: usize = 16;
/// NIM's own app secrets are 12 hexadecimal characters; a customer keeps the credentials they have.
pub const NIM_SECRET_MIN_LEN: usize = 12;

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

/// NIM's application key and secret: the configuration's, else `CONFAB_NIM_APP_KEY` and
/// `CONFAB_NIM_APP_SECRET`, else the pair stored in the data dir, else a new pair generated and stored (mode
/// 0600). Returns whether it was generated (the caller then says where it is, never the secret itself).
pub fn resolve_nim(
    configured: (&str, &str),
    env: (Option<String>, Option<String>),
    data_dir: &Path,
) -> anyhow::Result<(String, String, Source)> {
    if !configured.0.is_empty() && !configured.1.is_empty() {
        anyhow::ensure!(
            configured.1.len() >= NIM_SECRET_MIN_LEN,
            "nim.app_secret must be at least {NIM_SECRET_MIN_LEN} characters"
        );
        return Ok((configured.0.into(), configured.1.into(), Source::Environment));
    }
    if let (Some(k), Some(s)) = env
        && !k.is_empty()
        && !s.is_empty()
    {
        anyhow::ensure!(
            s.len() >= NIM_SECRET_MIN_LEN,
            "CONFAB_NIM_APP_SECRET must be at least {NIM_SECRET_MIN_LEN} characters"
        );
        return Ok((k, s, Source::Environment));
    }
    let path = data_dir.join(NIM_FILE_NAME);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut lines = text.lines();
        if let (Some(k), Some(s)) = (lines.next(), lines.next()) {
            return Ok((k.trim().into(), s.trim().into(), Source::Stored));
        }
        anyhow::bail!("{} must hold the app key and the secret on two lines", path.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = confab_service::auth::generate_token("")[..32].to_string();
    let secret = confab_service::auth::generate_token("")[..32].to_string();
    write_private(&path, &format!("{key}\n{secret}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((key, secret, Source::Generated))
}

pub const NIM_FILE_NAME: &str = "nim_app";

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

    #[test]
    fn nim_credentials_come_from_config_env_or_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, s1, src) = resolve_nim(("", ""), (None, None), dir.path()).unwrap();
        assert!(matches!(src, Source::Generated));
        assert_eq!((k1.len(), s1.len()), (32, 32));
        let (k2, s2, src) = resolve_nim(("", ""), (None, None), dir.path()).unwrap();
        assert!(matches!(src, Source::Stored));
        assert_eq!((k1, s1), (k2, s2));
        let (k, s, _) = resolve_nim(
            ("", ""),
            (Some("k".into()), Some("a-long-enough-secret".into())),
            dir.path(),
        )
        .unwrap();
        assert_eq!((k.as_str(), s.as_str()), ("k", "a-long-enough-secret"));
        assert!(resolve_nim(("", ""), (Some("k".into()), Some("short".into())), dir.path()).is_err());
        // NIM's own secrets: 12 hexadecimal characters, from the environment or the configuration.
        let (_, s, _) = resolve_nim(("", ""), (Some("k".into()), Some("0123456789ab".into())), dir.path()).unwrap();
        assert_eq!(s, "0123456789ab");
        assert!(resolve_nim(("", ""), (Some("k".into()), Some("0123456789a".into())), dir.path()).is_err());
        let (k, _, _) = resolve_nim(("cfg", "cfg-secret-12"), (None, None), dir.path()).unwrap();
        assert_eq!(k, "cfg");
        assert!(resolve_nim(("cfg", "cfg-secret"), (None, None), dir.path()).is_err());
    }
}
