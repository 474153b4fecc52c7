//! Moderation review (master token): messages a flag rule matched, listed with their rules, approved or
//! removed (deleted for everyone).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
use confab_domain::{DomainError, MessageId, Millis};
use confab_service::moderation::{parse_rules, rules_json};
use confab_wire::MessageDto;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::channels::parse_channel_id;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};

#[derive(Serialize, ToSchema)]
pub struct FlaggedDto<'a> {
    pub message: MessageDto<'a>,
    /// The flag rules it matched.
    pub rules: &'a [String],
    /// `pending`, `approved` or `removed`.
    #[schema(value_type = String, example = "pending")]
    pub state: &'static str,
    pub flagged_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<Millis>,
}

impl<'a> From<&'a FlaggedMessage> for FlaggedDto<'a> {
    fn from(f: &'a FlaggedMessage) -> Self {
        FlaggedDto {
            message: MessageDto::from(&f.message),
            rules: &f.rules,
            state: f.state.as_str(),
            flagged_at: f.flagged_at,
            reviewed_at: f.reviewed_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct FlaggedList<'a> {
    pub flagged: Vec<FlaggedDto<'a>>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlagListQuery {
    /// `pending` (default), `approved`, `removed` or `all`.
    pub state: Option<String>,
    pub channel_id: Option<String>,
    /// Message id to list after (exclusive).
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/moderation/flags", security(("master_token" = [])), tag = "moderation", params(FlagListQuery),
    responses((status = 200, body = FlaggedList), (status = 400, body = ProblemBody)))]
pub async fn list_flags(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(q): ApiQuery<FlagListQuery>,
) -> ApiResult<axum::response::Response> {
    let state = match q.state.as_deref().unwrap_or("pending") {
        "all" => None,
        s => Some(
            FlagState::parse(s)
                .ok_or_else(|| DomainError::invalid("state", "must be pending, approved, removed or all"))?,
        ),
    };
    let limit = q.limit.unwrap_or(50);
    let query = FlagQuery {
        state,
        channel_id: q.channel_id.as_deref().map(parse_channel_id).transpose()?,
        after: q.after.map(MessageId),
        limit,
    };
    let flags = st.service.list_flags(&actor, query).await?;
    let next = (flags.len() >= limit.max(1) as usize)
        .then(|| flags.last().map(|f| f.message.id.0))
        .flatten();
    Ok(Json(FlaggedList {
        flagged: flags.iter().map(FlaggedDto::from).collect(),
        next,
    })
    .into_response())
}

async fn review(
    st: AppState,
    actor: confab_service::Actor,
    id: i64,
    state: FlagState,
) -> ApiResult<axum::response::Response> {
    let f = st.service.review_flag(&actor, MessageId(id), state).await?;
    Ok(Json(FlaggedDto::from(&f)).into_response())
}

/// Keeps the message; the flag is settled. Approving twice is harmless; approving a removed message is 409.
#[utoipa::path(post, path = "/moderation/flags/{message_id}/approve", security(("master_token" = [])), tag = "moderation",
    responses((status = 200, body = FlaggedDto), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn approve(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::response::Response> {
    review(st, actor, id, FlagState::Approved).await
}

/// Deletes the message for everyone (members get `message.deleted`); the flag is settled. Removing twice is
/// harmless; removing an approved message is 409 (delete it through the messages API instead).
#[utoipa::path(post, path = "/moderation/flags/{message_id}/remove", security(("master_token" = [])), tag = "moderation",
    responses((status = 200, body = FlaggedDto), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn remove(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::response::Response> {
    review(st, actor, id, FlagState::Removed).await
}

#[derive(Serialize, ToSchema)]
pub struct RulesDto {
    /// The configuration file's `[moderation]` rules (read-only here).
    #[schema(value_type = Object)]
    pub file: serde_json::Value,
    /// The rules added through this API (`{rules: [...], max_links}`), applied besides the file's.
    #[schema(value_type = Object)]
    pub app: serde_json::Value,
}

#[utoipa::path(get, path = "/moderation/rules", security(("master_token" = [])), tag = "moderation", responses((status = 200, body = RulesDto)))]
pub async fn get_rules(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<axum::response::Response> {
    let v = st.service.moderation_rules(&actor)?;
    Ok(Json(RulesDto {
        file: rules_json(&v.file),
        app: rules_json(&v.app),
    })
    .into_response())
}

/// Replaces the application's rules (each `{name, words, patterns, action: block|mask|flag, reason}`, plus
/// `max_links`). A rule that does not compile is refused with its name and nothing changes.
#[utoipa::path(put, path = "/moderation/rules", security(("master_token" = [])), tag = "moderation", request_body(content = Object),
    responses((status = 200, body = RulesDto), (status = 400, body = ProblemBody)))]
pub async fn put_rules(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<axum::response::Response> {
    st.service.set_moderation_rules(&actor, parse_rules(body)?).await?;
    get_rules(State(st), Auth(actor)).await
}

#[derive(Serialize, ToSchema)]
pub struct ChannelRulesDto {
    /// The channel's own rules, applied besides the application's; `null` when it has none.
    #[schema(value_type = Object)]
    pub rules: Option<serde_json::Value>,
}

#[utoipa::path(get, path = "/channels/{channel_id}/moderation/rules", security(("master_token" = [])), tag = "moderation",
    responses((status = 200, body = ChannelRulesDto), (status = 404, body = ProblemBody)))]
pub async fn get_channel_rules(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(channel): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    let rules = st
        .service
        .channel_moderation_rules(&actor, &parse_channel_id(&channel)?)
        .await?;
    Ok(Json(ChannelRulesDto {
        rules: rules.as_ref().map(rules_json),
    })
    .into_response())
}

#[utoipa::path(put, path = "/channels/{channel_id}/moderation/rules", security(("master_token" = [])), tag = "moderation",
    request_body(content = Object),
    responses((status = 200, body = ChannelRulesDto), (status = 400, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn put_channel_rules(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(channel): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<axum::response::Response> {
    let rules = st
        .service
        .set_channel_moderation_rules(&actor, &parse_channel_id(&channel)?, Some(parse_rules(body)?))
        .await?;
    Ok(Json(ChannelRulesDto {
        rules: rules.as_ref().map(rules_json),
    })
    .into_response())
}

#[utoipa::path(delete, path = "/channels/{channel_id}/moderation/rules", security(("master_token" = [])), tag = "moderation",
    responses((status = 204), (status = 404, body = ProblemBody)))]
pub async fn delete_channel_rules(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(channel): ApiPath<String>,
) -> ApiResult<axum::http::StatusCode> {
    st.service
        .set_channel_moderation_rules(&actor, &parse_channel_id(&channel)?, None)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
