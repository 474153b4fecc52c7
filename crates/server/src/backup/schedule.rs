//! Scheduled backups: one every `[backup] every` into `[backup] dir`, the newest `keep` kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::Config;

const PREFIX: &str = "confab-";
const SUFFIX: &str = ".tar.gz";

/// Starts the schedule when `[backup] dir` is set (the configuration was checked: `every` parses). The first
/// backup is due `every` after the newest one in the directory, or now when there is none, so restarts do
/// not postpone backups.
pub fn spawn_scheduled(config: &Config, shutdown: CancellationToken) {
    if !config.backup.enabled() {
        return;
    }
    let Ok(every) = config.backup.interval() else {
        return;
    };
    let config = config.clone();
    tokio::spawn(async move {
        let dir = config.backup.dir.clone();
        loop {
            let wait = newest(&dir)
                .and_then(|t| (t + every).duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let run = config.clone();
            let done = tokio::task::spawn_blocking(move || run_once(&run)).await;
            match done {
                Ok(Ok((path, manifest))) => {
                    metrics::counter!("confab_backups_total", "outcome" => "ok").increment(1);
                    metrics::gauge!("confab_backup_last_success_timestamp_seconds")
                        .set(manifest.created_at as f64 / 1000.0);
                    tracing::info!(path = %path.display(), summary = %manifest.summary(), "backup written");
                }
                Ok(Err(e)) => {
                    metrics::counter!("confab_backups_total", "outcome" => "failed").increment(1);
                    tracing::error!(error = format!("{e:#}"), dir = %dir.display(), "scheduled backup failed");
                    // Try again after a pause rather than at once.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every.min(Duration::from_secs(600))) => {}
                    }
                }
                Err(e) => tracing::error!(error = %e, "scheduled backup panicked"),
            }
        }
    });
}

/// Writes one backup into the directory and deletes the oldest beyond `keep`.
pub fn run_once(config: &Config) -> anyhow::Result<(PathBuf, super::Manifest)> {
    let dir = &config.backup.dir;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let path = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    let manifest = super::backup(config, &path)?;
    for old in scheduled(dir).into_iter().rev().skip(config.backup.keep.max(1)) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot delete an old backup");
        }
    }
    Ok((path, manifest))
}

/// The scheduled backups in `dir`, oldest first (their names sort by time).
fn scheduled(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    found
}

fn newest(dir: &Path) -> Option<SystemTime> {
    let path = scheduled(dir).pop()?;
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
