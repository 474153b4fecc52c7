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
pub mod providers;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use confab_gateway::{GatewayConfig, Hub};
use confab_service::Confab;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

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
}

/// Upgrades to the WebSocket protocol of `docs/protocol.md`. Authenticated before the upgrade.
#[utoipa::path(get, path = "/api/v1/ws", tag = "realtime",
    params(("token" = Option<String>, Query, description = "session token, when no Authorization header can be set")),
    responses((status = 101, description = "switching to WebSocket"), (status = 401, body = error::ProblemBody)))]
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

async fn openapi_json() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::request(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

/// The `/api/v1` router.
pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    let api = Router::new()
        .route("/users", post(users::create_user).get(users::list_users))
        .route(
            "/users/{user_id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/users/{user_id}/sessions",
            post(users::issue_session).delete(users::revoke_sessions),
        )
        .route("/me", get(users::me))
        .route("/dev/login", get(dev::status).post(dev::login))
        .route("/channels", post(channels::create_channel).get(channels::list_channels))
        .route(
            "/channels/{channel_id}",
            get(channels::get_channel)
                .patch(channels::update_channel)
                .delete(channels::delete_channel),
        )
        .route(
            "/channels/{channel_id}/members",
            post(channels::invite).get(channels::list_members),
        )
        .route(
            "/channels/{channel_id}/members/{user_id}",
            axum::routing::delete(channels::remove_member),
        )
        .route("/channels/{channel_id}/leave", post(channels::leave))
        .route("/channels/{channel_id}/read", post(channels::mark_read))
        .route(
            "/channels/{channel_id}/messages",
            post(messages::send_message).get(messages::history),
        )
        .route(
            "/messages/{message_id}",
            get(messages::get_message)
                .patch(messages::edit_message)
                .delete(messages::delete_message),
        )
        .route("/messages/{message_id}/replies", get(messages::thread))
        .route("/messages/{message_id}/stop", post(bots::stop_reply))
        .route("/bots", post(bots::create_bot).get(bots::list_bots))
        .route(
            "/bots/{bot_id}",
            get(bots::get_bot).patch(bots::update_bot).delete(bots::delete_bot),
        )
        .route("/usage", get(bots::usage))
        .route(
            "/providers",
            get(providers::list_providers).post(providers::add_provider),
        )
        .route("/providers/{name}", axum::routing::delete(providers::delete_provider))
        .route(
            "/moderation/rules",
            get(moderation::get_rules).put(moderation::put_rules),
        )
        .route(
            "/channels/{channel_id}/moderation/rules",
            get(moderation::get_channel_rules)
                .put(moderation::put_channel_rules)
                .delete(moderation::delete_channel_rules),
        )
        .route("/moderation/flags", get(moderation::list_flags))
        .route("/moderation/flags/{message_id}/approve", post(moderation::approve))
        .route("/moderation/flags/{message_id}/remove", post(moderation::remove))
        .route(
            "/webhooks/endpoints",
            get(webhooks::list_endpoints).post(webhooks::create_endpoint),
        )
        .route(
            "/webhooks/endpoints/{endpoint_id}",
            get(webhooks::get_endpoint)
                .patch(webhooks::update_endpoint)
                .delete(webhooks::delete_endpoint),
        )
        .route(
            "/webhooks/endpoints/{endpoint_id}/rotate_secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/webhooks/endpoints/{endpoint_id}/attempts",
            get(webhooks::list_attempts),
        )
        .route(
            "/webhooks/endpoints/{endpoint_id}/dead_letters",
            get(webhooks::list_dead_letters),
        )
        .route(
            "/webhooks/endpoints/{endpoint_id}/dead_letters/{event_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/files/{file_id}", get(files::download))
        .route("/ws", get(ws_upgrade))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    let uploads = Router::new()
        .route("/files", post(files::upload))
        .layer(DefaultBodyLimit::max(limits.max_upload_request_bytes));
    Router::new()
        .nest("/api/v1", api.merge(uploads).fallback(not_found))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Confab native API", version = "1", description = "Users, channels, messages, files and the \
        WebSocket protocol (docs/protocol.md). Authenticate with `Authorization: Bearer <token>`: the master API \
        token for application calls, a session token for a user's client."),
    paths(
        users::create_user, users::list_users, users::get_user, users::me, users::update_user, users::delete_user,
        users::issue_session, users::revoke_sessions, dev::status, dev::login,
        channels::create_channel, channels::list_channels, channels::get_channel, channels::update_channel,
        channels::delete_channel, channels::invite, channels::list_members, channels::remove_member,
        channels::leave, channels::mark_read,
        messages::send_message, messages::history, messages::get_message, messages::edit_message,
        messages::delete_message, messages::thread,
        files::upload, files::download, ws_upgrade,
        bots::create_bot, bots::list_bots, bots::get_bot, bots::update_bot, bots::delete_bot, bots::stop_reply,
        bots::usage, providers::list_providers, providers::add_provider, providers::delete_provider,
        webhooks::create_endpoint, webhooks::list_endpoints, webhooks::get_endpoint, webhooks::update_endpoint,
        webhooks::delete_endpoint, webhooks::rotate_secret, webhooks::list_attempts, webhooks::list_dead_letters,
        webhooks::redeliver, moderation::list_flags, moderation::approve, moderation::remove,
        moderation::get_rules, moderation::put_rules, moderation::get_channel_rules, moderation::put_channel_rules,
        moderation::delete_channel_rules,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}
