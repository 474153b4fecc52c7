//! The Sendbird Platform API v3 compatibility surface under `/v3`, so applications written against Sendbird's
//! server API (and its official platform SDKs) can point at Confab. Handlers translate Sendbird's shapes to the
//! service and back; every rule lives in `confab_service::Confab`, every Sendbird quirk stays in this crate.
//!
//! Implemented: users (create, list, view, update, delete, session tokens).

pub mod error;
pub mod extract;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::Method;
use axum::routing::{get, post};
use confab_service::Confab;

use crate::error::{ErrorCode, SendbirdError};

#[derive(Clone)]
pub struct SendbirdState {
    pub service: Arc<Confab>,
}

async fn unknown_route(method: Method, OriginalUri(uri): OriginalUri) -> SendbirdError {
    SendbirdError::request(
        ErrorCode::InvalidRequestUrl,
        format!("Invalid request URL: {method} {}.", uri.path()),
    )
}

/// The `/v3` router. `max_body_bytes` bounds JSON bodies, as on the native surface.
pub fn router(service: Arc<Confab>, max_body_bytes: usize) -> Router {
    let v3 = Router::new()
        .route("/users", post(users::create_user).get(users::list_users))
        .route(
            "/users/{user_id}",
            get(users::view_user).put(users::update_user).delete(users::delete_user),
        )
        .route("/users/{user_id}/token", post(users::issue_token))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .method_not_allowed_fallback(unknown_route)
        .fallback(unknown_route);
    Router::new().nest("/v3", v3).with_state(SendbirdState { service })
}
