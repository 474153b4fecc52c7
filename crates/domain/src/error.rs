//! The one error vocabulary of the domain. Every API surface maps it to its own wire format
//! (native problem JSON, Sendbird `{error, code, message}`, NIM `{code, desc}`).

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A field failed validation.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: Cow<'static, str>,
    },
    #[error("{entity} not found: {id}")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} already exists: {id}")]
    AlreadyExists { entity: &'static str, id: String },
    /// The caller is authenticated but may not do this.
    #[error("forbidden: {0}")]
    Forbidden(Cow<'static, str>),
    /// The target exists but its current state does not allow this (stopping a reply that has finished).
    #[error("conflict: {0}")]
    Conflict(Cow<'static, str>),
    /// The acting user is not a member of the channel.
    #[error("user {user} is not a member of channel {channel}")]
    NotMember { user: String, channel: String },
    /// The content was refused by a moderation rule; `reason` is for the sender.
    #[error("{reason}")]
    Rejected { rule: String, reason: String },
    /// A size or count limit was exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded { what: &'static str, limit: u64 },
    /// Too many requests; retry after the given delay.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error("authentication required or token invalid")]
    Unauthenticated,
    /// A dependency (storage, bus) cannot serve right now; the request may be retried.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    pub fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        DomainError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        DomainError::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    pub fn already_exists(entity: &'static str, id: impl ToString) -> Self {
        DomainError::AlreadyExists {
            entity,
            id: id.to_string(),
        }
    }

    pub fn forbidden(reason: impl Into<Cow<'static, str>>) -> Self {
        DomainError::Forbidden(reason.into())
    }

    pub fn conflict(reason: impl Into<Cow<'static, str>>) -> Self {
        DomainError::Conflict(reason.into())
    }

    pub fn not_member(user: impl ToString, channel: impl ToString) -> Self {
        DomainError::NotMember {
            user: user.to_string(),
            channel: channel.to_string(),
        }
    }
}

pub type DomainResult<T> = Result<T, DomainError>;
