//! Configuration checks: `confab check-config` runs them all; `confab serve` runs the same loading and value
//! checks and refuses to start on an error, with the same messages.
//!
//! - [`load`]: the file and the environment into a [`Config`]: every unknown key and wrong type, each named
//!   with where it came from (the file, or the `CONFAB_*` variable);
//! - [`values`]: what the types cannot say: values that contradict each other, references to providers
//!   that do not exist, weak or misplaced secrets, missing files;
//! - [`reach`]: whether the dependencies answer (PostgreSQL, NATS, the object store, each LLM provider, the
//!   configured webhooks), which only `check-config` tests: a running server waits for its database and
//!   NATS (`start_timeout_secs`), and starts while a provider is down (its bots answer `failed` meanwhile).

mod load;
mod reach;
mod values;

use std::path::Path;

use figment::Figment;

use crate::Config;

pub use load::load;
pub use reach::reachability;
pub use values::values;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The server refuses to start.
    Error,
    /// Works, but probably not as meant, or unsafe.
    Warning,
}

/// One thing found, with the key it is about and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The configuration key (`storage.postgres_url`), or a name such as `CONFAB_API_TOKEN`.
    pub key: String,
    pub message: String,
}

impl Finding {
    pub fn error(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Error,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn warning(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Warning,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.key, self.message)
    }
}

/// A configuration as loaded, with where each value came from.
pub struct Loaded {
    pub config: Config,
    pub figment: Figment,
}

impl Loaded {
    /// Whether `key` (`storage.postgres_url`) was set in TOML, rather than by the environment or a default.
    pub fn from_file(&self, key: &str) -> bool {
        self.figment.find_metadata(key).is_some_and(|m| m.name.contains("TOML"))
    }
}

/// Prints the findings to stderr, then a count; true when there is an error.
pub fn report(findings: &[Finding]) -> bool {
    let mut sorted = findings.to_vec();
    sorted.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.key.cmp(&b.key)));
    for f in &sorted {
        eprintln!("{f}");
    }
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// `confab check-config`: loading, values, then (when `reach`) the dependencies; prints what it found and
/// returns whether the configuration is free of errors.
pub async fn check_config(file: Option<&Path>, data_dir: Option<&Path>, reach: bool) -> bool {
    let mut loaded = match load(file) {
        Ok(l) => l,
        Err(findings) => {
            report(&findings);
            eprintln!("{} errors: the configuration was not read further", findings.len());
            return false;
        }
    };
    if let Some(d) = data_dir {
        loaded.config.data_dir = d.to_path_buf();
    }
    let mut findings = values(&loaded, &|k| std::env::var(k).ok());
    if reach && !findings.iter().any(|f| f.severity == Severity::Error) {
        findings.extend(reachability(&loaded.config, &|k| std::env::var(k).ok()).await);
    }
    let failed = report(&findings);
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = findings.len() - errors;
    if findings.is_empty() {
        eprintln!(
            "the configuration is fine{}",
            if reach { " and every dependency answered" } else { "" }
        );
    } else {
        eprintln!("{errors} errors, {warnings} warnings");
    }
    !failed
}
