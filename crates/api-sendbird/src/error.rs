//! Sendbird's error format, `{"error": true, "code": <six digits>, "message": "..."}`, and the JSON responses of
//! this surface: always an object, always `Content-Type: application/json; charset=utf-8` (the TypeScript SDK
//! refuses a response without a JSON content type; the Python SDK refuses an empty body, even for deletes).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use confab_domain::DomainError;
use serde::Serialize;

pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// The Sendbird error codes this surface sends. Numbers from Sendbird's error-code list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    MissingParameter,
    UnauthorizedRequest,
    ParameterValueLengthExceeded,
    InvalidValue,
    ResourceNotFound,
    ResourceAlreadyExists,
    InvalidApiToken,
    InvalidJsonBody,
    InvalidRequestUrl,
    InternalError,
    RateLimitExceeded,
    /// Sendbird's 400700, also used for filtered content.
    ContentBlocked,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::MissingParameter => 400105,
            ErrorCode::UnauthorizedRequest => 400108,
            ErrorCode::ParameterValueLengthExceeded => 400110,
            ErrorCode::InvalidValue => 400111,
            ErrorCode::ResourceNotFound => 400201,
            ErrorCode::ResourceAlreadyExists => 400202,
            ErrorCode::InvalidApiToken => 400401,
            ErrorCode::InvalidJsonBody => 400403,
            ErrorCode::InvalidRequestUrl => 400404,
            ErrorCode::InternalError => 500901,
            ErrorCode::RateLimitExceeded => 500910,
            ErrorCode::ContentBlocked => 400700,
        }
    }

    /// Sendbird answers nearly every client error with HTTP 400, "not found" and a bad token included, so
    /// clients written against it look at `code`, not the status. Rate limiting is the exception: its status
    /// is not documented, and 429 is what tells generic HTTP clients to back off.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Every error of the Sendbird surface: a domain error from the service, or a request refused at the edge.
#[derive(Debug, thiserror::Error)]
pub enum SendbirdError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Refused before it reached the domain: bad token, unreadable body or query, missing parameter.
    #[error("{message}")]
    Request {
        status: StatusCode,
        code: ErrorCode,
        message: Cow<'static, str>,
    },
}

pub type SendbirdResult<T> = Result<T, SendbirdError>;

impl SendbirdError {
    pub fn request(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        SendbirdError::Request {
            status: code.status(),
            code,
            message: message.into(),
        }
    }

    pub fn invalid_api_token() -> Self {
        SendbirdError::request(ErrorCode::InvalidApiToken, INVALID_API_TOKEN)
    }

    pub fn missing(param: &str) -> Self {
        SendbirdError::request(ErrorCode::MissingParameter, format!("\"{param}\" must be specified."))
    }

    pub fn invalid(param: &str, reason: impl std::fmt::Display) -> Self {
        SendbirdError::request(
            ErrorCode::InvalidValue,
            format!("Invalid value: \"{param}\": {reason}."),
        )
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            SendbirdError::Domain(e) => code_of(e),
            SendbirdError::Request { code, .. } => *code,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            // Same code as an internal error (Sendbird has no other), but a status proxies understand as "retry".
            SendbirdError::Domain(DomainError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            SendbirdError::Domain(e) => code_of(e).status(),
            SendbirdError::Request { status, .. } => *status,
        }
    }

    /// What the client reads: internal details stay in the log.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            SendbirdError::Domain(DomainError::Internal(_)) => "Internal server error.".into(),
            SendbirdError::Domain(DomainError::Unavailable(_)) => "Service temporarily unavailable; retry.".into(),
            SendbirdError::Domain(DomainError::Unauthenticated) => INVALID_API_TOKEN.into(),
            SendbirdError::Domain(e) => e.to_string().into(),
            SendbirdError::Request { message, .. } => message.clone(),
        }
    }
}

/// Sendbird's own wording for a bad or missing `Api-Token`.
const INVALID_API_TOKEN: &str = "Invalid value: \"Api-Token\".";

/// The Sendbird code for each domain error.
pub fn code_of(e: &DomainError) -> ErrorCode {
    match e {
        DomainError::Invalid { .. } | DomainError::LimitExceeded { .. } | DomainError::Conflict(_) => {
            ErrorCode::InvalidValue
        }
        DomainError::NotFound { .. } => ErrorCode::ResourceNotFound,
        DomainError::AlreadyExists { .. } => ErrorCode::ResourceAlreadyExists,
        DomainError::Forbidden(_) | DomainError::NotMember { .. } => ErrorCode::UnauthorizedRequest,
        DomainError::Rejected { .. } => ErrorCode::ContentBlocked,
        DomainError::RateLimited { .. } => ErrorCode::RateLimitExceeded,
        DomainError::Unauthenticated => ErrorCode::InvalidApiToken,
        DomainError::Unavailable(_) | DomainError::Internal(_) => ErrorCode::InternalError,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: bool,
    code: u32,
    message: &'a str,
}

impl IntoResponse for SendbirdError {
    fn into_response(self) -> Response {
        if let SendbirdError::Domain(e @ (DomainError::Internal(_) | DomainError::Unavailable(_))) = &self {
            tracing::error!(error = %e, "sendbird request failed");
        }
        let message = self.message();
        let body = ErrorBody {
            error: true,
            code: self.code().code(),
            message: &message,
        };
        let mut resp = json_response(self.status(), &body);
        if let SendbirdError::Domain(DomainError::RateLimited { retry_after_ms }) = self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A successful response: the value as a JSON object with the charset spelled out.
pub struct Reply<T>(pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, &self.0)
    }
}

/// The `{}` that deletes and other results without content answer.
#[derive(Serialize)]
pub struct Empty {}

pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a sendbird response");
            let body = br#"{"error":true,"code":500901,"message":"Internal server error."}"#;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
                &body[..],
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_sendbird_codes() {
        let cases = [
            (DomainError::invalid("user_id", "must not be empty"), 400111, 400),
            (
                DomainError::LimitExceeded {
                    what: "text",
                    limit: 10,
                },
                400111,
                400,
            ),
            (DomainError::not_found("user", "u1"), 400201, 400),
            (DomainError::already_exists("user", "u1"), 400202, 400),
            (DomainError::forbidden("no"), 400108, 400),
            (DomainError::not_member("u1", "c1"), 400108, 400),
            (DomainError::Unauthenticated, 400401, 400),
            (DomainError::RateLimited { retry_after_ms: 1500 }, 500910, 429),
            (DomainError::Internal("disk on fire".into()), 500901, 500),
            (DomainError::Unavailable("writer busy".into()), 500901, 503),
        ];
        for (e, code, status) in cases {
            let sb = SendbirdError::from(e.clone());
            assert_eq!(sb.code().code(), code, "{e:?}");
            assert_eq!(sb.status().as_u16(), status, "{e:?}");
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_message() {
        let e = SendbirdError::from(DomainError::Internal("secret path /var/db".into()));
        assert!(!e.message().contains("secret"));
        let e = SendbirdError::from(DomainError::Unauthenticated);
        assert_eq!(e.message(), "Invalid value: \"Api-Token\".");
    }

    #[test]
    fn edge_errors_keep_their_code_and_status() {
        let e = SendbirdError::missing("user_id");
        assert_eq!((e.code().code(), e.status()), (400105, StatusCode::BAD_REQUEST));
        assert_eq!(e.message(), "\"user_id\" must be specified.");
        let e = SendbirdError::invalid("limit", "not a number");
        assert_eq!((e.code().code(), e.status()), (400111, StatusCode::BAD_REQUEST));
        let e = SendbirdError::invalid_api_token();
        assert_eq!((e.code().code(), e.status()), (400401, StatusCode::BAD_REQUEST));
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let resp = SendbirdError::from(DomainError::RateLimited { retry_after_ms: 1500 }).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn bodies_are_the_documented_objects() {
        let resp = SendbirdError::invalid_api_token().into_response();
        let bytes = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": true, "code": 400401, "message": "Invalid value: \"Api-Token\"."})
        );
        let resp = Reply(Empty {}).into_response();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], JSON_UTF8);
        let bytes = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&bytes[..], b"{}");
    }
}
