//! What clients are told of a refused request: the same code in the REST problem JSON and in WebSocket
//! error frames.

use confab_domain::DomainError;

/// Stable, machine-readable error codes shared by the REST problem JSON and WebSocket error frames.
pub fn error_code(e: &DomainError) -> &'static str {
    match e {
        DomainError::Invalid { .. } => "invalid_argument",
        DomainError::NotFound { entity, .. } => match *entity {
            "user" => "user_not_found",
            "channel" => "channel_not_found",
            "message" => "message_not_found",
            "file" => "file_not_found",
            _ => "not_found",
        },
        DomainError::AlreadyExists { .. } => "already_exists",
        DomainError::Conflict(_) => "conflict",
        DomainError::Forbidden(_) => "forbidden",
        DomainError::Rejected { .. } => "rejected",
        DomainError::NotMember { .. } => "not_a_member",
        DomainError::LimitExceeded { .. } => "limit_exceeded",
        DomainError::RateLimited { .. } => "rate_limited",
        DomainError::Unauthenticated => "unauthenticated",
        DomainError::Unavailable(_) => "unavailable",
        DomainError::Internal(_) => "internal",
    }
}

/// The message shown to clients: internal details stay in the log.
pub fn error_message(e: &DomainError) -> String {
    match e {
        DomainError::Internal(_) => "internal error".to_string(),
        DomainError::Unavailable(_) => "service temporarily unavailable; retry".to_string(),
        other => other.to_string(),
    }
}
