//! Extractors of the Sendbird surface. Every rejection (bad token, unreadable body, bad query or path) comes back
//! in Sendbird's error format instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use confab_service::Actor;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};

use crate::SendbirdState;
use crate::error::{ErrorCode, SendbirdError, SendbirdResult};

/// The application's server, proven by the master API token in the `Api-Token` header. The header name is
/// matched case-insensitively (the Python SDK sends `api-token` on most calls and `Api-Token` on a few).
pub struct ApiToken;

impl ApiToken {
    /// The Platform API acts for the application, never as a user.
    pub fn actor(&self) -> Actor {
        Actor::Admin
    }
}

impl FromRequestParts<SendbirdState> for ApiToken {
    type Rejection = SendbirdError;

    async fn from_request_parts(parts: &mut Parts, st: &SendbirdState) -> Result<Self, Self::Rejection> {
        let presented = parts.headers.get("api-token").and_then(|v| v.to_str().ok());
        match presented {
            Some(token) if st.service.is_master_token(token) => Ok(ApiToken),
            _ => Err(SendbirdError::invalid_api_token()),
        }
    }
}

/// A JSON body, read whatever its `Content-Type` says: the Python SDK sends `application/json` without a
/// charset, Sendbird's streaming example sends none at all. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = SendbirdError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> SendbirdResult<T> {
    // JSON is UTF-8 (RFC 8259); serde would skip the bytes of an ignored key's string without looking.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(SendbirdError::request(
            ErrorCode::InvalidJsonBody,
            format!("Invalid JSON request body: not UTF-8 ({e})."),
        ));
    }
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // Every body is an object: serde would also read a struct from an array (`[null, null]` as all fields
    // absent), so anything else that is JSON carries none of the parameters.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && (first == Some(&b'[') || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok())
    {
        return Err(SendbirdError::request(
            ErrorCode::MissingParameter,
            "The request body must be a JSON object.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data => deserialize_error(&text),
            _ => SendbirdError::request(
                ErrorCode::InvalidJsonBody,
                format!("Invalid JSON request body: {text}."),
            ),
        }
    })
}

fn bytes_rejection(rej: BytesRejection) -> SendbirdError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // Sendbird has no code for an oversized body; keep the HTTP status that says what happened.
        return SendbirdError::Request {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::ParameterValueLengthExceeded,
            message: "The request body is too large.".into(),
        };
    }
    SendbirdError::request(
        ErrorCode::InvalidJsonBody,
        format!("Cannot read the request body: {}.", rej.body_text()),
    )
}

/// A value that deserialized badly. A missing required field is Sendbird's 400105, anything else 400111.
/// serde words the former as "missing field `name`" (stable since serde 1.0, pinned by a test below).
fn deserialize_error(text: &str) -> SendbirdError {
    match missing_field(text) {
        Some(field) => SendbirdError::missing(field),
        None => SendbirdError::request(ErrorCode::InvalidValue, format!("Invalid value: {text}.")),
    }
}

fn missing_field(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("missing field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// Query string parameters.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = SendbirdError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryParams(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> SendbirdError {
    deserialize_error(&rej.body_text())
}

/// Path parameters (a segment that is not valid percent-encoded UTF-8 is an invalid value).
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = SendbirdError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParams(v)),
            Err(rej) => Err(path_rejection(rej)),
        }
    }
}

fn path_rejection(rej: PathRejection) -> SendbirdError {
    SendbirdError::request(ErrorCode::InvalidValue, format!("Invalid value: {}.", rej.body_text()))
}

/// Parses a query boolean as Sendbird's callers spell it: the Python SDK sends `True`/`False`, others
/// `true`/`false` or `1`/`0`.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `#[serde(default, deserialize_with = "extract::lenient_bool")]` for an `Option<bool>` query field.
pub fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let raw = String::deserialize(d)?;
    parse_bool(&raw)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a boolean, got {raw:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        user_id: String,
        #[serde(default)]
        nickname: Option<String>,
    }

    fn code_of<T: std::fmt::Debug>(r: SendbirdResult<T>) -> u32 {
        r.unwrap_err().code().code()
    }

    #[test]
    fn json_errors_get_their_sendbird_codes() {
        assert_eq!(code_of(parse_json::<Body>(br#"{"nickname": "x"}"#)), 400105);
        assert_eq!(code_of(parse_json::<Body>(b"")), 400105, "an empty body reads as {{}}");
        assert_eq!(code_of(parse_json::<Body>(br#"{"user_id": 5}"#)), 400111);
        assert_eq!(code_of(parse_json::<Body>(br#"{"user_id": "#)), 400403);
        assert_eq!(code_of(parse_json::<Body>(b"not json")), 400403);
        assert_eq!(
            code_of(parse_json::<Body>(b"{\"user_id\": \"a\", \"zz\": \"\xff\xfe\"}")),
            400403,
            "bytes that are not UTF-8, even in a key nobody reads"
        );
        for not_an_object in [&b"[null, null]"[..], b" [[[[", b"\"a\"", b"7", b"null"] {
            assert_eq!(code_of(parse_json::<Body>(not_an_object)), 400105);
        }
        let b: Body = parse_json(br#"{"user_id": "a", "nickname": null, "unknown": 1}"#).unwrap();
        assert_eq!((b.user_id.as_str(), b.nickname), ("a", None));
    }

    #[test]
    fn missing_fields_are_named() {
        let e = parse_json::<Body>(b"{}").unwrap_err();
        assert_eq!(e.message(), "\"user_id\" must be specified.");
        assert_eq!(
            missing_field("Failed to deserialize query string: missing field `limit`"),
            Some("limit")
        );
        assert_eq!(missing_field("invalid type: integer"), None);
    }

    #[test]
    fn booleans_parse_like_the_sdks_send_them() {
        for (raw, v) in [
            ("True", true),
            ("true", true),
            ("1", true),
            ("False", false),
            ("false", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(raw), Some(v), "{raw}");
        }
        assert_eq!(parse_bool("yes"), None);
    }

    #[tokio::test]
    async fn query_rejections_are_sendbird_errors() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Q {
            limit: Option<u32>,
            #[serde(default, deserialize_with = "lenient_bool")]
            show_bot: Option<bool>,
        }
        let parts = |uri: &str| axum::http::Request::builder().uri(uri).body(()).unwrap().into_parts().0;
        let QueryParams(q) = QueryParams::<Q>::from_request_parts(&mut parts("/x?limit=3&show_bot=False"), &())
            .await
            .unwrap();
        assert_eq!((q.limit, q.show_bot), (Some(3), Some(false)));
        for uri in ["/x?limit=abc", "/x?show_bot=maybe"] {
            let e = QueryParams::<Q>::from_request_parts(&mut parts(uri), &())
                .await
                .err()
                .unwrap();
            assert_eq!(e.code().code(), 400111, "{uri}");
        }
    }
}
