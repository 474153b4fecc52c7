//! Outgoing webhook endpoints (master token): subscriptions with event filters, their latest attempts,
//! dead letters and manual redelivery. Deliveries are signed with the Standard Webhooks headers; the secret
//! is shown once, when the endpoint is created or its secret rotated.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::Millis;
use confab_domain::outbox::DeadLetter;
use confab_service::webhooks::{Attempt, EndpointPatch, EndpointSpec, EndpointView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointBody {
    /// Where events are POSTed. Private, loopback and link-local destinations are refused unless the
    /// configuration allows them.
    pub url: String,
    /// Event types (`message.sent`) or patterns (`message.*`); omitted or empty (or `*`): every event but the
    /// opt-in `bot.triggered`, delivered only to endpoints that name it (or `bot.*`).
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointBody {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// A disabled endpoint receives nothing: events recorded while it is disabled are not delivered to it.
    pub enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointDto {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// `standard`; `sendbird` or `nim` for the endpoint a compatibility surface keeps from its own webhook
    /// settings, `sendbird_callbacks` for Sendbird's bot callbacks (no URL of its own: each goes to its bot's
    /// callback URL). Shown here with its deliveries; changed only by its surface, apart from its secret.
    pub format: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Events waiting for delivery (read from the outbox and not yet delivered or dead-lettered).
    pub pending: u64,
    /// Counters since the server started.
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
}

impl From<EndpointView> for EndpointDto {
    fn from(v: EndpointView) -> Self {
        EndpointDto {
            id: v.id,
            url: v.url,
            events: v.events,
            description: v.description,
            enabled: v.enabled,
            format: v.format,
            created_at: v.created_at,
            updated_at: v.updated_at,
            pending: v.pending,
            delivered: v.delivered,
            failed_attempts: v.failed_attempts,
            dead_lettered: v.dead_lettered,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointDto,
    /// The signing secret (`whsec_…`); shown only now.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointDto>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretDto {
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptDto {
    pub event_id: u64,
    pub event_type: String,
    pub at: Millis,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub delivered: bool,
}

impl From<Attempt> for AttemptDto {
    fn from(a: Attempt) -> Self {
        AttemptDto {
            event_id: a.event_id,
            event_type: a.event_type,
            at: a.at,
            duration_ms: a.duration_ms,
            status: a.status,
            error: a.error,
            delivered: a.delivered,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<AttemptDto>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterDto {
    pub event_id: u64,
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// The event as the native format renders it (`type`, `timestamp`, `data`), whatever the endpoint's format.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub created_at: Millis,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: Millis,
}

impl From<DeadLetter> for DeadLetterDto {
    fn from(d: DeadLetter) -> Self {
        DeadLetterDto {
            event_id: d.event.id,
            event_type: d.event.event_type,
            channel_id: d.event.channel_id.map(|c| c.as_str().to_string()),
            payload: serde_json::from_slice(&d.event.payload).unwrap_or(Value::Null),
            created_at: d.event.created_at,
            attempts: d.attempts,
            last_error: d.last_error,
            failed_at: d.failed_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterDto>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Event id to list after (exclusive).
    pub after: Option<u64>,
    /// Page size, at most 200 (default 50).
    pub limit: Option<u32>,
}

#[utoipa::path(post, path = "/webhooks/endpoints", security(("master_token" = [])), tag = "webhooks", request_body = CreateEndpointBody,
    responses((status = 201, body = CreatedEndpoint), (status = 400, body = ProblemBody)))]
pub async fn create_endpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(b): ApiJson<CreateEndpointBody>,
) -> ApiResult<impl IntoResponse> {
    let (view, secret) = st
        .service
        .webhook_endpoints(&actor)?
        .create(EndpointSpec {
            url: b.url,
            events: b.events,
            description: b.description,
            enabled: b.enabled,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint {
            endpoint: view.into(),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/webhooks/endpoints", security(("master_token" = [])), tag = "webhooks", responses((status = 200, body = EndpointList)))]
pub async fn list_endpoints(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<impl IntoResponse> {
    let list = st.service.webhook_endpoints(&actor)?.list().await?;
    Ok(Json(EndpointList {
        endpoints: list.into_iter().map(EndpointDto::from).collect(),
    }))
}

#[utoipa::path(get, path = "/webhooks/endpoints/{endpoint_id}", security(("master_token" = [])), tag = "webhooks",
    responses((status = 200, body = EndpointDto), (status = 404, body = ProblemBody)))]
pub async fn get_endpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let v = st.service.webhook_endpoints(&actor)?.get(&id).await?;
    Ok(Json(EndpointDto::from(v)))
}

#[utoipa::path(patch, path = "/webhooks/endpoints/{endpoint_id}", security(("master_token" = [])), tag = "webhooks",
    request_body = UpdateEndpointBody, responses((status = 200, body = EndpointDto), (status = 404, body = ProblemBody)))]
pub async fn update_endpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(b): ApiJson<UpdateEndpointBody>,
) -> ApiResult<impl IntoResponse> {
    let v = st
        .service
        .webhook_endpoints(&actor)?
        .update(
            &id,
            EndpointPatch {
                url: b.url,
                events: b.events,
                description: b.description,
                enabled: b.enabled,
            },
        )
        .await?;
    Ok(Json(EndpointDto::from(v)))
}

#[utoipa::path(delete, path = "/webhooks/endpoints/{endpoint_id}", security(("master_token" = [])), tag = "webhooks",
    responses((status = 204), (status = 404, body = ProblemBody)))]
pub async fn delete_endpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.webhook_endpoints(&actor)?.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/webhooks/endpoints/{endpoint_id}/rotate_secret", security(("master_token" = [])), tag = "webhooks",
    responses((status = 200, body = SecretDto), (status = 404, body = ProblemBody)))]
pub async fn rotate_secret(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let secret = st.service.webhook_endpoints(&actor)?.rotate_secret(&id).await?;
    Ok(Json(SecretDto { secret }))
}

#[utoipa::path(get, path = "/webhooks/endpoints/{endpoint_id}/attempts", security(("master_token" = [])), tag = "webhooks",
    responses((status = 200, body = AttemptList), (status = 404, body = ProblemBody)))]
pub async fn list_attempts(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let attempts = st.service.webhook_endpoints(&actor)?.attempts(&id).await?;
    Ok(Json(AttemptList {
        attempts: attempts.into_iter().map(AttemptDto::from).collect(),
    }))
}

#[utoipa::path(get, path = "/webhooks/endpoints/{endpoint_id}/dead_letters", security(("master_token" = [])), tag = "webhooks",
    params(DeadLetterQuery), responses((status = 200, body = DeadLetterList), (status = 404, body = ProblemBody)))]
pub async fn list_dead_letters(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> ApiResult<impl IntoResponse> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let letters = st
        .service
        .webhook_endpoints(&actor)?
        .dead_letters(&id, q.after.unwrap_or(0), limit)
        .await?;
    let next = (letters.len() == limit as usize)
        .then(|| letters.last().map(|d| d.event.id))
        .flatten();
    Ok(Json(DeadLetterList {
        dead_letters: letters.into_iter().map(DeadLetterDto::from).collect(),
        next,
    }))
}

/// Sends a dead letter again now, with its original `webhook-id`. Accepted: the dead letter is gone; refused:
/// it stays, with this attempt counted. Either way the answer is the attempt.
#[utoipa::path(post, path = "/webhooks/endpoints/{endpoint_id}/dead_letters/{event_id}/redeliver", security(("master_token" = [])),
    tag = "webhooks", responses((status = 200, body = AttemptDto), (status = 404, body = ProblemBody)))]
pub async fn redeliver(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath((id, event_id)): ApiPath<(String, u64)>,
) -> ApiResult<impl IntoResponse> {
    let a = st.service.webhook_endpoints(&actor)?.redeliver(&id, event_id).await?;
    Ok(Json(AttemptDto::from(a)))
}
