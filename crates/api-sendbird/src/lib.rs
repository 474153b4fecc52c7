//! The Sendbird Platform API v3 compatibility surface under `/v3`, so applications written against Sendbird's
//! server API (and its official platform SDKs) can point at Confab. Handlers translate Sendbird's shapes to the
//! service and back; every rule lives in `confab_service::Confab`, every Sendbird quirk stays in this crate.
//!
//! Implemented: users (create, list, view, update, delete, session tokens); group channels (create, distinct
//! or not; list, view, update, delete, invite, leave, members, membership check); their messages (send MESG,
//! FILE as JSON with a URL or multipart with the file, ADMM; list around a timestamp or a message, view,
//! update, delete); webhook settings and signed webhook events (see [`webhooks`]); bots (see [`bots`]):
//! create, list, view, update, delete with our own `ai` object for LLM bots, callback bots told through
//! `bot_message_notification` (see [`callbacks`]: from the durable outbox, as webhooks are), join and leave channels, `send` (JSON or multipart),
//! `send_stream` (a chunked body of concatenated JSON objects, parsed as it arrives, written through the
//! service's `ReplyWriter` like LLM replies) and `ai_chatbot_replies` (JSON, or SSE on request, through the
//! service's `BotAnswerer` port). Message and channel objects are rendered in `dto`, shared by every handler.

pub mod bots;
pub mod callbacks;
pub mod channels;
pub mod dto;
pub mod error;
pub mod extract;
pub mod messages;
pub mod users;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use confab_service::Confab;
use webhooks::SendbirdWebhooks;

use crate::error::{ErrorCode, SendbirdError};

#[derive(Clone)]
pub struct SendbirdState {
    pub service: Arc<Confab>,
    pub webhooks: Arc<SendbirdWebhooks>,
    /// Bound of JSON bodies and form text fields on routes whose own limit is the upload size.
    pub max_body_bytes: usize,
}

/// Shortest useful timeout.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Requests that may carry a file.
    pub max_upload_request_bytes: usize,
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
    let uploads = Router::new()
        .route(
            "/group_channels/{channel_url}/messages",
            post(messages::send_message).get(messages::list_messages),
        )
        .route("/bots/{bot_userid}/send", post(bots::send))
        .layer(DefaultBodyLimit::max(limits.max_upload_request_bytes));
    let v3 = Router::new()
        .route("/users", post(users::create_user).get(users::list_users))
        .route(
            "/users/{user_id}",
            get(users::view_user).put(users::update_user).delete(users::delete_user),
        )
        .route(
            "/users/{user_id}/token",
            post(users::issue_token).delete(users::revoke_tokens),
        )
        .route(
            "/group_channels",
            post(channels::create_channel).get(channels::list_channels),
        )
        .route(
            "/group_channels/{channel_url}",
            get(channels::view_channel)
                .put(channels::update_channel)
                .delete(channels::delete_channel),
        )
        .route("/group_channels/{channel_url}/invite", post(channels::invite))
        .route("/group_channels/{channel_url}/leave", put(channels::leave))
        .route("/group_channels/{channel_url}/members", get(channels::list_members))
        .route(
            "/group_channels/{channel_url}/members/{user_id}",
            get(channels::check_member),
        )
        .route(
            "/group_channels/{channel_url}/messages/{message_id}",
            get(messages::view_message)
                .put(messages::update_message)
                .delete(messages::delete_message),
        )
        .route(
            "/applications/settings/webhook",
            get(webhooks::view_settings).put(webhooks::update_settings),
        )
        .route("/bots", post(bots::create_bot).get(bots::list_bots))
        .route(
            "/bots/{bot_userid}",
            get(bots::view_bot).put(bots::update_bot).delete(bots::delete_bot),
        )
        .route(
            "/bots/{bot_userid}/channels",
            post(bots::join_channels).delete(bots::leave_all_channels),
        )
        .route(
            "/bots/{bot_userid}/channels/{channel_url}",
            axum::routing::delete(bots::leave_channel),
        )
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .merge(uploads)
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(timeout_response))
                .timeout(limits.request_timeout.max(MIN_TIMEOUT)),
        )
        // Generation and streamed uploads last as long as the text: bounded by the provider layer's
        // timeouts and the stream's own limits instead of the request timeout.
        .merge(
            Router::new()
                .route("/bots/{bot_userid}/ai_chatbot_replies", post(bots::ai_chatbot_replies))
                .route("/bots/{bot_userid}/send_stream", post(bots::send_stream))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
        .method_not_allowed_fallback(unknown_route)
        .fallback(unknown_route);
    let state = SendbirdState {
        service,
        webhooks,
        max_body_bytes: limits.max_body_bytes,
    };
    Router::new()
        .nest("/v3", v3)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
}
