//! Extractors that turn HTTP input into domain values, rendering every rejection in the native error format.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use confab_service::Actor;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// JSON body; malformed JSON, a wrong content type or an oversized body become 4xx problem JSON.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(mut value) = axum::Json::<Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Ok(ApiJson(v)),
            Err(e) => e,
        };
        // JSON compares numbers by value, and the document's `integer` (JSON Schema) includes `3.0`: a
        // client that writes every number as a float (JavaScript, Python's json for some values) is read
        // as it meant.
        if integral_floats_to_integers(&mut value)
            && let Ok(v) = serde_path_to_error::deserialize::<_, T>(&value)
        {
            return Ok(ApiJson(v));
        }
        Err(ApiError::request(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("Failed to deserialize the JSON body into the target type: {err}"),
        ))
    }
}

/// Rewrites every float with no fractional part that an integer type can hold as that integer; whether
/// anything changed.
fn integral_floats_to_integers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^64 and -2^63 are exact as f64; every f64 of magnitude 2^53 or more is an integer.
            let int = if f.fract() != 0.0 {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(Value::from(f as u64))
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                Some(Value::from(f as i64))
            } else {
                None
            };
            int.map(|i| *v = i).is_some()
        }
        Value::Array(items) => items.iter_mut().fold(false, |c, x| integral_floats_to_integers(x) | c),
        Value::Object(fields) => fields
            .values_mut()
            .fold(false, |c, x| integral_floats_to_integers(x) | c),
        _ => false,
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
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = serde_json::json!({"seq": 3.0, "big": 1e19, "neg": -2.0, "t": 0.5, "n": [7, 1.5, 4.0]});
        assert!(super::integral_floats_to_integers(&mut v));
        assert_eq!(
            v,
            serde_json::json!({"seq": 3, "big": 10_000_000_000_000_000_000u64, "neg": -2, "t": 0.5, "n": [7, 1.5, 4]})
        );
        let mut plain = serde_json::json!({"seq": 3, "t": 0.5});
        assert!(!super::integral_floats_to_integers(&mut plain));
    }

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
