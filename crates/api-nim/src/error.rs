//! NIM's envelope: always HTTP 200 with `application/json; charset=utf-8`; success is `{"code": 200, ...}`,
//! failure `{"code": <n>, "desc": "..."}` with NIM's codes (the official SDKs treat any other HTTP status as
//! a transport failure).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use confab_domain::DomainError;
use serde_json::{Map, Value};

pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// NIM's status codes used by this surface.
pub mod code {
    pub const OK: u16 = 200;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    /// Parameter errors, and every authentication failure.
    pub const PARAMETER: u16 = 414;
    pub const RATE_LIMITED: u16 = 416;
    /// A repeated request (the same Nonce, CurTime, CheckSum and body within the clock window).
    pub const REPEATED: u16 = 431;
    pub const INTERNAL: u16 = 500;
    pub const BUSY: u16 = 503;
    pub const TEAM_MEMBERS_OVER_LIMIT: u16 = 801;
    pub const TEAM_NO_PERMISSION: u16 = 802;
    pub const TEAM_NOT_FOUND: u16 = 803;
    pub const NOT_IN_TEAM: u16 = 804;
    pub const ALREADY_IN_TEAM: u16 = 809;
}

#[derive(Debug, thiserror::Error)]
#[error("{code}: {desc}")]
pub struct NimError {
    pub code: u16,
    pub desc: String,
}

pub type NimResult<T> = Result<T, NimError>;

impl NimError {
    pub fn new(code: u16, desc: impl Into<String>) -> Self {
        NimError {
            code,
            desc: desc.into(),
        }
    }

    pub fn param(desc: impl Into<String>) -> Self {
        NimError::new(code::PARAMETER, desc)
    }

    pub fn missing(name: &str) -> Self {
        NimError::param(format!("{name} is required"))
    }

    pub fn invalid(name: &str, why: impl std::fmt::Display) -> Self {
        NimError::param(format!("{name}: {why}"))
    }
}

impl From<DomainError> for NimError {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::Invalid { .. } | DomainError::LimitExceeded { .. } => NimError::param(e.to_string()),
            DomainError::NotFound { .. } => NimError::new(code::NOT_FOUND, e.to_string()),
            DomainError::AlreadyExists { .. } | DomainError::Conflict(_) => {
                NimError::new(code::PARAMETER, e.to_string())
            }
            DomainError::Forbidden(_) | DomainError::Unauthenticated => NimError::new(code::FORBIDDEN, e.to_string()),
            DomainError::NotMember { .. } | DomainError::Rejected { .. } => {
                NimError::new(code::FORBIDDEN, e.to_string())
            }
            DomainError::RateLimited { .. } => NimError::new(code::RATE_LIMITED, e.to_string()),
            DomainError::Unavailable(_) => NimError::new(code::BUSY, "server busy, retry"),
            DomainError::Internal(detail) => {
                tracing::error!(error = %detail, "nim request failed");
                NimError::new(code::INTERNAL, "server internal error")
            }
        }
    }
}

fn json(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
        v.to_string(),
    )
        .into_response()
}

impl IntoResponse for NimError {
    fn into_response(self) -> Response {
        json(&serde_json::json!({"code": self.code, "desc": self.desc}))
    }
}

/// A success: `{"code": 200}` plus the endpoint's own keys (`info`, `data`, `msgs`...).
pub struct Ok200(pub Map<String, Value>);

impl Ok200 {
    pub fn empty() -> Self {
        Ok200(Map::new())
    }

    pub fn with(key: &str, value: Value) -> Self {
        let mut m = Map::new();
        m.insert(key.into(), value);
        Ok200(m)
    }

    pub fn and(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.into(), value);
        self
    }
}

impl IntoResponse for Ok200 {
    fn into_response(self) -> Response {
        let mut m = Map::with_capacity(self.0.len() + 1);
        m.insert("code".into(), Value::from(code::OK));
        m.extend(self.0);
        json(&Value::Object(m))
    }
}
