//! The native API's error format: `{"error": {"code": "...", "message": "..."}}` with a matching HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use confab_domain::DomainError;
use confab_wire::{error_code, error_message};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub enum ApiError {
    Domain(DomainError),
    /// A request the HTTP layer refused before it reached the domain (bad JSON, wrong content type, too large).
    Request {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

#[derive(Serialize, ToSchema)]
pub struct ProblemBody {
    pub error: ProblemDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ProblemDetail {
    /// Stable machine-readable code, e.g. `channel_not_found`, `not_a_member`, `rate_limited`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn request(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Request {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::Domain(e)
    }
}

pub fn status_of(e: &DomainError) -> StatusCode {
    match e {
        DomainError::Invalid { .. } | DomainError::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
        DomainError::NotFound { .. } => StatusCode::NOT_FOUND,
        DomainError::AlreadyExists { .. } | DomainError::Conflict(_) => StatusCode::CONFLICT,
        DomainError::Forbidden(_) | DomainError::NotMember { .. } => StatusCode::FORBIDDEN,
        DomainError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        DomainError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        DomainError::Unauthenticated => StatusCode::UNAUTHORIZED,
        DomainError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DomainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, retry_after) = match &self {
            ApiError::Domain(e) => {
                if matches!(e, DomainError::Internal(_) | DomainError::Unavailable(_)) {
                    tracing::error!(error = %e, "request failed");
                }
                let retry = match e {
                    DomainError::RateLimited { retry_after_ms } => Some(retry_after_ms.div_ceil(1000).max(1)),
                    _ => None,
                };
                (status_of(e), error_code(e).to_string(), error_message(e), retry)
            }
            ApiError::Request { status, code, message } => (*status, code.to_string(), message.clone(), None),
        };
        let mut resp = (
            status,
            axum::Json(ProblemBody {
                error: ProblemDetail { code, message },
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"confab\""),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
