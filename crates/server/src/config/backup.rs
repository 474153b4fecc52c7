use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Scheduled backups (`[backup]`): off while `dir` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where scheduled backups are written (best on another disk than the data dir); empty: none.
    pub dir: PathBuf,
    /// Time between two backups, e.g. "6h", "1d", "30m".
    pub every: String,
    /// Scheduled backups kept in `dir`; older ones are deleted once a new one is complete.
    pub keep: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: PathBuf::new(),
            every: "24h".into(),
            keep: 7,
        }
    }
}

/// Shortest time between two scheduled backups.
pub const MIN_EVERY: Duration = Duration::from_secs(60);

impl BackupConfig {
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// `every` as a duration, or what is wrong with it.
    pub fn interval(&self) -> Result<Duration, String> {
        let d = humantime::parse_duration(self.every.trim())
            .map_err(|e| format!("{:?} is not a duration such as \"6h\" or \"1d\" ({e})", self.every))?;
        if d < MIN_EVERY {
            return Err(format!("{:?} is shorter than the minimum, 1m", self.every));
        }
        Ok(d)
    }
}
