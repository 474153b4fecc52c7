//! The native API surface: REST under `/api/v1`, the WebSocket at `/api/v1/ws`, and the OpenAPI document.
//! Handlers parse input into domain values, call the service, and render results; they hold no rules.

pub mod bots;
pub mod channels;
pub mod dev;
pub mod error;
pub mod extract;
pub mod files;
pub mod messages;
pub mod moderation;
pub mod openapi;
pub mod providers;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use confab_gateway::{GatewayConfig, Hub};
use confab_service::Confab;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::WsCredential;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Confab>,
    pub hub: Arc<Hub>,
    pub gateway: GatewayConfig,
    pub shutdown: CancellationToken,
    /// Lets `POST /api/v1/dev/login` sign in as any user (development only).
    pub dev_login: bool,
}

#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest upload request (multipart), a little above the file size limit.
    pub max_upload_request_bytes: usize,
    /// A request not answered within this time gets a problem-JSON 408.
    pub request_timeout: std::time::Duration,
}

/// Upgrades to the WebSocket protocol of `docs/protocol.md`. Authenticated before the upgrade.
#[utoipa::path(get, path = "/ws", security(("session_token" = []), ("token_query" = [])), tag = "realtime",
    responses((status = 101, description = "switching to WebSocket"),
              (status = 400, body = error::ProblemBody, description = "not a WebSocket upgrade request"),
              (status = 403, body = error::ProblemBody, description = "the master token cannot open a session"),
              (status = 426, body = error::ProblemBody, description = "the connection cannot be upgraded")))]
async fn ws_upgrade(
    State(st): State<AppState>,
    WsCredential(grant): WsCredential,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => {
            return ApiError::request(rej.status(), "websocket_upgrade_required", rej.body_text()).into_response();
        }
    };
    let max = st.gateway.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // A small read buffer keeps idle connections cheap; the write buffer lets one flush carry a batch.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(st.gateway.queue_bytes.max(64 * 1024))
        .on_upgrade(move |socket| confab_gateway::session::run(st.hub.clone(), grant, socket, st.shutdown.clone()))
}

async fn not_found() -> ApiError {
    ApiError::request(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
async fn method_not_allowed() -> ApiError {
    ApiError::request(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not serve that method",
    )
}

/// Every route of `/api/v1`, each registered with its documentation (`routes!` reads the handler's
/// `#[utoipa::path]`), so a route cannot be served without being documented. The only place routes are added:
/// `tests/api/openapi.rs` checks the crate's sources for any other.
fn documented_routes(limits: &HttpLimits) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(users::create_user, users::list_users))
        .routes(routes!(users::get_user, users::update_user, users::delete_user))
        .routes(routes!(users::issue_session, users::revoke_sessions))
        .routes(routes!(users::me))
        .routes(routes!(dev::status, dev::login))
        .routes(routes!(channels::create_channel, channels::list_channels))
        .routes(routes!(
            channels::get_channel,
            channels::update_channel,
            channels::delete_channel
        ))
        .routes(routes!(channels::invite, channels::list_members))
        .routes(routes!(channels::remove_member))
        .routes(routes!(channels::leave))
        .routes(routes!(channels::mark_read))
        .routes(routes!(messages::send_message, messages::history))
        .routes(routes!(
            messages::get_message,
            messages::edit_message,
            messages::delete_message
        ))
        .routes(routes!(messages::thread))
        .routes(routes!(bots::stop_reply))
        .routes(routes!(bots::create_bot, bots::list_bots))
        .routes(routes!(bots::get_bot, bots::update_bot, bots::delete_bot))
        .routes(routes!(bots::usage))
        .routes(routes!(providers::list_providers, providers::add_provider))
        .routes(routes!(providers::delete_provider))
        .routes(routes!(moderation::get_rules, moderation::put_rules))
        .routes(routes!(
            moderation::get_channel_rules,
            moderation::put_channel_rules,
            moderation::delete_channel_rules
        ))
        .routes(routes!(moderation::list_flags))
        .routes(routes!(moderation::approve))
        .routes(routes!(moderation::remove))
        .routes(routes!(webhooks::list_endpoints, webhooks::create_endpoint))
        .routes(routes!(
            webhooks::get_endpoint,
            webhooks::update_endpoint,
            webhooks::delete_endpoint
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_attempts))
        .routes(routes!(webhooks::list_dead_letters))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(files::download))
        .routes(routes!(ws_upgrade))
        .routes(routes!(openapi::openapi_json))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    let uploads = OpenApiRouter::new()
        .routes(routes!(files::upload))
        .layer(DefaultBodyLimit::max(limits.max_upload_request_bytes));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(api.merge(uploads))
}

/// The `/api/v1` router.
pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    let (api, doc) = documented_routes(limits).split_for_parts();
    let doc = openapi::Document::new(doc);
    let api = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(doc));
    // A timeout or a panic is answered in this surface's own format, like every surface's.
    Router::new()
        .nest("/api/v1", api)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timeout_response))
                .timeout(limits.request_timeout),
        )
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
}

async fn timeout_response(_: tower::BoxError) -> ApiError {
    ApiError::request(
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
        "the request took longer than the server's request timeout",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::request(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
}

/// The OpenAPI document `GET /api/v1/openapi.json` serves.
pub fn openapi_document() -> serde_json::Value {
    let limits = HttpLimits {
        max_body_bytes: 0,
        max_upload_request_bytes: 0,
        request_timeout: std::time::Duration::ZERO,
    };
    let (_, doc) = documented_routes(&limits).split_for_parts();
    openapi::Document::new(doc).json().clone()
}
