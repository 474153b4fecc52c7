//! The Sendbird Platform API v3 compatibility surface under `/v3`, so applications written against Sendbird's
//! server API (and its official platform SDKs) can point at Confab. Handlers translate Sendbird's shapes to the
//! service and back; every rule lives in `confab_service::Confab`, every Sendbird quirk stays in this crate.
//!
//! Implemented: users (create, list, view, update, delete, session tokens); webhook settings and signed
//! webhook events (see [`webhooks`]).

pub mod error;
pub mod extract;
pub mod users;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use confab_service::Confab;
use webhooks::SendbirdWebhooks;

use crate::error::{ErrorCode, SendbirdError};

#[derive(Clone)]
pub struct SendbirdState {
    pub service: Arc<Confab>,
    pub webhooks: Arc<SendbirdWebhooks>,
}

async fn unknown_route(method: Method, OriginalUri(uri): OriginalUri) -> SendbirdError {
    SendbirdError::request(
        ErrorCode::InvalidRequestUrl,
        format!("Invalid request URL: {method} {}.", uri.path()),
    )
}

/// Limits of this surface (the same values as the native surface's).
#[derive(Clone, Copy, Debug)]
pub struct SendbirdLimits {
    /// JSON and form bodies.
    pub max_body_bytes: usize,
    /// A request must be answered within this time (streamed uploads excepted).
    pub request_timeout: Duration,
}

/// A panic in a handler: Sendbird's internal error, not the native surface's shape.
fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a sendbird request handler panicked");
    SendbirdError::request(ErrorCode::InternalError, "Internal server error.").into_response()
}

async fn timeout_response(_: tower::BoxError) -> SendbirdError {
    SendbirdError::Request {
        status: axum::http::StatusCode::REQUEST_TIMEOUT,
        code: ErrorCode::InternalError,
        message: "The request timed out.".into(),
    }
}

/// The `/v3` router.
pub fn router(service: Arc<Confab>, webhooks: Arc<SendbirdWebhooks>, limits: SendbirdLimits) -> Router {
    let v3 = Router::new()
        .route("/users", post(users::create_user).get(users::list_users))
        .route(
            "/users/{user_id}",
            get(users::view_user).put(users::update_user).delete(users::delete_user),
        )
        .route("/users/{user_id}/token", post(users::issue_token))
        .route(
            "/applications/settings/webhook",
            get(webhooks::view_settings).put(webhooks::update_settings),
        )
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(timeout_response))
                .timeout(limits.request_timeout),
        )
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .method_not_allowed_fallback(unknown_route)
        .fallback(unknown_route);
    Router::new()
        .nest("/v3", v3)
        .with_state(SendbirdState { service, webhooks })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
}
