//! Extractors that turn HTTP input into domain values, rendering every rejection in the native error format.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use confab_service::Actor;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// JSON body; malformed JSON, a wrong content type or an oversized body become 4xx problem JSON.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

pub fn json_rejection(rej: JsonRejection) -> ApiError {
    let text = rej.body_text();
    match rej {
        JsonRejection::JsonDataError(_) => ApiError::request(StatusCode::BAD_REQUEST, "invalid_argument", text),
        JsonRejection::JsonSyntaxError(_) => ApiError::request(StatusCode::BAD_REQUEST, "malformed_json", text),
        JsonRejection::MissingJsonContentType(_) => ApiError::request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::request(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", text)
        }
        _ => ApiError::request(rej.status(), "bad_request", text),
    }
}

/// Query string parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::request(StatusCode::BAD_REQUEST, "invalid_argument", rej.body_text())
}

/// Path parameters; a segment that does not parse (`/messages/abc`) is a 400 in problem JSON, like every
/// other rejection, instead of axum's plain-text answer.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rej) => Err(path_rejection(rej)),
        }
    }
}

fn path_rejection(rej: PathRejection) -> ApiError {
    match rej {
        PathRejection::FailedToDeserializePathParams(e) => {
            ApiError::request(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text())
        }
        // Extracting path parameters where the route has none: a wiring mistake, not the client's.
        other => ApiError::request(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.body_text()),
    }
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Auth(pub Actor);

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A `token` query parameter, accepted only where a browser cannot set headers (WebSocket, file links).
pub fn query_token(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Domain(confab_domain::DomainError::Unauthenticated))?;
        Ok(Auth(state.service.authenticate(token).await?))
    }
}

/// Like `Auth`, but also accepts `?token=` (for WebSocket upgrades and file links).
pub struct AuthOrQueryToken(pub Actor);

impl FromRequestParts<AppState> for AuthOrQueryToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = match bearer(parts) {
            Some(t) => t.to_string(),
            None => query_token(parts).ok_or(ApiError::Domain(confab_domain::DomainError::Unauthenticated))?,
        };
        Ok(AuthOrQueryToken(state.service.authenticate(&token).await?))
    }
}

/// The credential of a WebSocket upgrade (bearer or `?token=`): a user's session, which the connection keeps
/// to re-check when the user's sessions are revoked and to close when it expires. The master token is refused.
pub struct WsCredential(pub confab_service::SessionGrant);

impl FromRequestParts<AppState> for WsCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = match bearer(parts) {
            Some(t) => t.to_string(),
            None => query_token(parts).ok_or(ApiError::Domain(confab_domain::DomainError::Unauthenticated))?,
        };
        if state.service.is_master_token(&token) {
            return Err(ApiError::Domain(confab_domain::DomainError::forbidden(
                "connect with a user's session token, not the master token",
            )));
        }
        Ok(WsCredential(state.service.session_grant(&token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_decoded() {
        let req = axum::http::Request::builder()
            .uri("/x?a=1&token=cfs_ab%2Bc&b=2")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(query_token(&parts).as_deref(), Some("cfs_ab+c"));
    }
}
