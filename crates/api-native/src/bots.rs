use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::bot::{BotSettings, UsageRecord, utc_day};
use confab_domain::model::{NewUser, UserPatch};
use confab_domain::{MessageId, now_millis};
use confab_service::Actor;
use confab_service::bots::BotView;
use confab_wire::UserDto;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::users::parse_user_id;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBotBody {
    /// The bot's user id.
    pub id: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub profile_url: String,
    /// Provider, fallbacks, model, system prompt, temperature, output cap, topic, custom content, context,
    /// trigger and budget settings; omitted fields take their defaults.
    #[schema(value_type = Object)]
    pub settings: BotSettings,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBotBody {
    pub nickname: Option<String>,
    pub profile_url: Option<String>,
    /// Replaces the settings as a whole.
    #[schema(value_type = Object)]
    pub settings: Option<BotSettings>,
}

#[derive(Serialize, ToSchema)]
pub struct BotDto<'a> {
    #[serde(flatten)]
    pub user: UserDto<'a>,
    /// For the application only: a user's client sees the bot's profile, never its instructions, provider
    /// or callback.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub settings: Option<&'a BotSettings>,
}

impl<'a> BotDto<'a> {
    pub fn new(b: &'a BotView, actor: &Actor) -> Self {
        BotDto {
            user: UserDto::new(&b.user.user, true),
            settings: actor.is_admin().then_some(&b.bot.settings),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BotList<'a> {
    pub bots: Vec<BotDto<'a>>,
}

#[utoipa::path(post, path = "/bots", security(("master_token" = [])), request_body = CreateBotBody, tag = "bots",
    responses((status = 201, body = BotDto), (status = 400, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn create_bot(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<CreateBotBody>,
) -> ApiResult<impl IntoResponse> {
    let user = NewUser {
        nickname: if body.nickname.is_empty() {
            body.id.clone()
        } else {
            body.nickname
        },
        id: parse_user_id(&body.id)?,
        profile_url: body.profile_url,
        metadata: Default::default(),
        is_bot: true,
    };
    let view = st.service.create_bot(&actor, user, body.settings).await?;
    Ok((StatusCode::CREATED, Json(BotDto::new(&view, &actor))).into_response())
}

#[utoipa::path(get, path = "/bots", security(("master_token" = []), ("session_token" = [])), tag = "bots", responses((status = 200, body = BotList)))]
pub async fn list_bots(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<impl IntoResponse> {
    let bots = st.service.list_bots(&actor).await?;
    Ok(Json(BotList {
        bots: bots.iter().map(|b| BotDto::new(b, &actor)).collect(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/bots/{bot_id}", security(("master_token" = []), ("session_token" = [])), tag = "bots",
    responses((status = 200, body = BotDto), (status = 404, body = ProblemBody)))]
pub async fn get_bot(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let view = st.service.get_bot(&actor, &parse_user_id(&id)?).await?;
    Ok(Json(BotDto::new(&view, &actor)).into_response())
}

#[utoipa::path(patch, path = "/bots/{bot_id}", security(("master_token" = [])), request_body = UpdateBotBody, tag = "bots",
    responses((status = 200, body = BotDto)))]
pub async fn update_bot(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateBotBody>,
) -> ApiResult<impl IntoResponse> {
    let profile = UserPatch {
        nickname: body.nickname,
        profile_url: body.profile_url,
        metadata: None,
        disabled: None,
    };
    let view = st
        .service
        .update_bot(&actor, &parse_user_id(&id)?, body.settings, profile)
        .await?;
    Ok(Json(BotDto::new(&view, &actor)).into_response())
}

#[utoipa::path(delete, path = "/bots/{bot_id}", security(("master_token" = [])), tag = "bots", responses((status = 204)))]
pub async fn delete_bot(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_bot(&actor, &parse_user_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a bot reply that is still generating; any member of its channel may.
#[utoipa::path(post, path = "/messages/{message_id}/stop", security(("master_token" = []), ("session_token" = [])), tag = "bots",
    responses((status = 202, description = "stop requested; the reply ends as `stopped`"),
        (status = 409, description = "`conflict`: the message is not a bot reply, or the reply has already finished", body = ProblemBody)))]
pub async fn stop_reply(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    st.service.stop_reply(&actor, MessageId(id)).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First day, `YYYY-MM-DD` (UTC); default today.
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC); default today.
    pub to: Option<String>,
    pub bot_id: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageRow<'a> {
    pub day: &'a str,
    pub bot_id: &'a str,
    pub user_id: &'a str,
    pub channel_id: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub replies: u64,
}

impl<'a> From<&'a UsageRecord> for UsageRow<'a> {
    fn from(u: &'a UsageRecord) -> Self {
        UsageRow {
            day: &u.day,
            bot_id: u.bot_id.as_str(),
            user_id: u.user_id.as_str(),
            channel_id: u.channel_id.as_str(),
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            replies: u.replies,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UsageList<'a> {
    pub usage: Vec<UsageRow<'a>>,
}

/// Token usage per day, bot, user and channel (master token).
#[utoipa::path(get, path = "/usage", security(("master_token" = [])), params(UsageParams), tag = "bots", responses((status = 200, body = UsageList)))]
pub async fn usage(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> ApiResult<impl IntoResponse> {
    let today = utc_day(now_millis());
    let from = p.from.unwrap_or_else(|| today.clone());
    let to = p.to.unwrap_or(today);
    let bot = p.bot_id.as_deref().map(parse_user_id).transpose()?;
    let user = p.user_id.as_deref().map(parse_user_id).transpose()?;
    let rows = st
        .service
        .usage(&actor, &from, &to, bot.as_ref(), user.as_ref())
        .await?;
    Ok(Json(UsageList {
        usage: rows.iter().map(UsageRow::from).collect(),
    })
    .into_response())
}
