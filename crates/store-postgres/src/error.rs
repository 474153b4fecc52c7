//! Errors: [`PostgresError`] for connecting and migrating, and how storage errors become `DomainError`s.

use confab_domain::DomainError;
use tokio_postgres::error::SqlState;

/// Why the store could not be opened or migrated. Its messages name the server (host and port) but never
/// the password of the URL.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The URL (or key/value connection string) does not parse.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    /// The server cannot be reached, or refused the connection (authentication, unknown database).
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The connection's `search_path` names no schema that exists: the tables would have nowhere to go.
    #[error("PostgreSQL at {target}: the search_path names no existing schema; create it first")]
    NoSchema { target: String },
    /// A migration failed (nothing of it was applied).
    #[error("schema migration failed: {0}")]
    Migrate(String),
    /// The connection pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

impl From<PostgresError> for DomainError {
    fn from(e: PostgresError) -> Self {
        DomainError::Unavailable(e.to_string())
    }
}

/// An error with its causes (tokio-postgres says "db error" and keeps the server's message as the source).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Why a step of a read or a write failed: the domain's answer (a precondition, a missing row), or the
/// database's error, whose kind the writer needs (retry the batch, fail the batch, or fail one command).
#[derive(Debug)]
pub(crate) enum Fail {
    Domain(DomainError),
    Sql(tokio_postgres::Error),
}

pub(crate) type Res<T> = Result<T, Fail>;

impl From<DomainError> for Fail {
    fn from(e: DomainError) -> Self {
        Fail::Domain(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Sql(e)
    }
}

impl Fail {
    pub(crate) fn into_domain(self) -> DomainError {
        match self {
            Fail::Domain(e) => e,
            Fail::Sql(e) => db_err(&e),
        }
    }
}

/// A row that does not map to the domain's types (a bug or a hand-edited row).
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Fail {
    Fail::Domain(DomainError::Internal(format!("corrupt row: {what}")))
}

/// What the writer does with a failed statement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The command fails alone: roll back to its savepoint, answer its error, go on with the batch.
    Command,
    /// A serialization failure or a deadlock: roll the batch back and apply it again.
    Retry,
    /// The connection is gone or unusable: the whole batch fails.
    Batch,
}

pub(crate) fn severity(e: &tokio_postgres::Error) -> Severity {
    match e.code() {
        None => Severity::Batch,
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
            Severity::Retry
        }
        // Connection exceptions, and the server shutting down.
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57P") => Severity::Batch,
        Some(_) => Severity::Command,
    }
}

/// Maps a database error to the domain's vocabulary as `store-sqlite` does: a unique key taken is
/// `AlreadyExists` (where a write does not handle it itself), text PostgreSQL cannot store is `Invalid`, the
/// rest (timeouts, lost connections, a full disk) an unavailable store, which the caller may retry.
pub(crate) fn db_err(e: &tokio_postgres::Error) -> DomainError {
    let Some(db) = e.as_db_error() else {
        return if e.is_closed() {
            DomainError::Unavailable("storage connection lost".into())
        } else {
            DomainError::Unavailable(format!("storage unreachable: {}", describe(e)))
        };
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        DomainError::AlreadyExists {
            entity: entity_of(db.table()),
            id: db.constraint().unwrap_or("key").to_string(),
        }
    } else if *code == SqlState::QUERY_CANCELED {
        DomainError::Unavailable("storage timeout".into())
    } else if *code == SqlState::LOCK_NOT_AVAILABLE {
        DomainError::Unavailable("storage busy".into())
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        DomainError::Unavailable("storage conflict; retry".into())
    } else if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE || *code == SqlState::UNTRANSLATABLE_CHARACTER {
        // PostgreSQL's text cannot hold NUL characters (SQLite's can).
        DomainError::invalid("text", "must not contain NUL characters")
    } else if code.code().starts_with("53") {
        DomainError::Unavailable("storage full".into())
    } else {
        DomainError::Unavailable(format!("storage error: {} ({})", db.message(), code.code()))
    }
}

fn entity_of(table: Option<&str>) -> &'static str {
    match table {
        Some("users") => "user",
        Some("channels") => "channel",
        Some("members") => "member",
        Some("messages" | "message_keys") => "message",
        Some("files") => "file",
        Some("sessions") => "session",
        Some("bots") => "bot",
        Some("flagged_messages") => "flagged message",
        _ => "row",
    }
}
