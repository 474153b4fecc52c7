use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::model::ChannelPatch;
use confab_domain::{ChannelId, ChannelSeq, DomainError, UserId};
use confab_service::{Actor, NewGroup};
use confab_wire::{ChannelDto, MemberDto};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::users::{PageQuery, parse_user_id};

pub fn parse_channel_id(raw: &str) -> ApiResult<ChannelId> {
    Ok(ChannelId::parse(raw)?)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelBody {
    /// `group` (default) or `direct`. A direct channel is distinct: the same two users always get the same one.
    #[serde(default)]
    pub kind: Option<String>,
    /// Members. For `direct`: the other user (session token) or both users (master token).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub user_ids: Vec<UserId>,
    /// Group id; generated when absent.
    #[schema(value_type = Option<String>)]
    pub id: Option<ChannelId>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub cover_url: String,
    #[serde(default)]
    pub custom_type: String,
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannelBody {
    pub name: Option<String>,
    pub cover_url: Option<String>,
    pub custom_type: Option<String>,
    /// `null` clears the data.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Object)]
    pub data: Option<Option<Value>>,
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Ok(Some(Option::<Value>::deserialize(d)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    #[schema(value_type = Vec<String>)]
    pub user_ids: Vec<UserId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// Everything up to and including this sequence has been read.
    pub seq: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ReadResult {
    pub read_seq: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelListQuery {
    pub after: Option<String>,
    pub limit: Option<u32>,
    /// Master token only: list this user's channels (default: every channel).
    pub user_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelList<'a> {
    pub channels: Vec<ChannelDto<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<&'a str>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList<'a> {
    pub members: Vec<MemberDto<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<&'a str>,
}

#[utoipa::path(post, path = "/channels", security(("master_token" = []), ("session_token" = [])), request_body = CreateChannelBody, tag = "channels",
    responses((status = 201, body = ChannelDto, description = "created"),
              (status = 200, body = ChannelDto, description = "the existing direct channel"),
              (status = 404, body = ProblemBody)))]
pub async fn create_channel(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<CreateChannelBody>,
) -> ApiResult<impl IntoResponse> {
    match body.kind.as_deref().unwrap_or("group") {
        "direct" => {
            let (a, b) = match (&actor, body.user_ids.as_slice()) {
                (Actor::User(me), [other]) => (me.clone(), other.clone()),
                (_, [a, b]) => (a.clone(), b.clone()),
                _ => {
                    return Err(DomainError::invalid(
                        "user_ids",
                        "a direct channel names the other user (or both users with the master token)",
                    )
                    .into());
                }
            };
            let (channel, created) = st.service.open_direct(&actor, &a, &b).await?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(ChannelDto::new(&channel))).into_response())
        }
        "group" => {
            let channel = st
                .service
                .create_group(
                    &actor,
                    NewGroup {
                        id: body.id,
                        name: body.name,
                        cover_url: body.cover_url,
                        custom_type: body.custom_type,
                        data: body.data,
                        members: body.user_ids,
                        distinct: false,
                    },
                )
                .await?;
            Ok((StatusCode::CREATED, Json(ChannelDto::new(&channel))).into_response())
        }
        _ => Err(DomainError::invalid("kind", "must be group or direct").into()),
    }
}

#[utoipa::path(get, path = "/channels", security(("master_token" = []), ("session_token" = [])), params(ChannelListQuery), tag = "channels",
    responses((status = 200, body = ChannelList)))]
pub async fn list_channels(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(q): ApiQuery<ChannelListQuery>,
) -> ApiResult<impl IntoResponse> {
    let after = q.after.as_deref().map(parse_channel_id).transpose()?;
    let user = q.user_id.as_deref().map(parse_user_id).transpose()?;
    let limit = q.limit.unwrap_or(50);
    let list = st
        .service
        .list_channels(&actor, user.as_ref(), after.as_ref(), limit)
        .await?;
    let full = list.len() as u32 >= limit.clamp(1, st.service.limits().max_page);
    let member_view = actor.user().is_some() || user.is_some();
    let body = ChannelList {
        channels: list
            .iter()
            .map(|mc| {
                if member_view {
                    ChannelDto::for_member(mc)
                } else {
                    ChannelDto::new(&mc.channel)
                }
            })
            .collect(),
        next: if full {
            list.last().map(|mc| mc.channel.id.as_str())
        } else {
            None
        },
    };
    Ok(Json(body).into_response())
}

#[utoipa::path(get, path = "/channels/{channel_id}", security(("master_token" = []), ("session_token" = [])), tag = "channels",
    responses((status = 200, body = ChannelDto), (status = 404, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn get_channel(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let mc = st.service.get_channel(&actor, &parse_channel_id(&id)?).await?;
    let dto = if actor.is_admin() {
        ChannelDto::new(&mc.channel)
    } else {
        ChannelDto::for_member(&mc)
    };
    Ok(Json(dto).into_response())
}

#[utoipa::path(patch, path = "/channels/{channel_id}", security(("master_token" = []), ("session_token" = [])), request_body = UpdateChannelBody, tag = "channels",
    responses((status = 200, body = ChannelDto)))]
pub async fn update_channel(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateChannelBody>,
) -> ApiResult<impl IntoResponse> {
    let patch = ChannelPatch {
        name: body.name,
        cover_url: body.cover_url,
        custom_type: body.custom_type,
        data: body.data,
    };
    let c = st
        .service
        .update_channel(&actor, &parse_channel_id(&id)?, patch)
        .await?;
    Ok(Json(ChannelDto::new(&c)).into_response())
}

#[utoipa::path(delete, path = "/channels/{channel_id}", security(("master_token" = []), ("session_token" = [])), tag = "channels", responses((status = 204)))]
pub async fn delete_channel(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_channel(&actor, &parse_channel_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/channels/{channel_id}/members", security(("master_token" = []), ("session_token" = [])), request_body = InviteBody, tag = "channels",
    responses((status = 200, body = ChannelDto)))]
pub async fn invite(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<InviteBody>,
) -> ApiResult<impl IntoResponse> {
    let c = st
        .service
        .invite(&actor, &parse_channel_id(&id)?, body.user_ids)
        .await?;
    Ok(Json(ChannelDto::new(&c)).into_response())
}

#[utoipa::path(get, path = "/channels/{channel_id}/members", security(("master_token" = []), ("session_token" = [])), params(PageQuery), tag = "channels",
    responses((status = 200, body = MemberList)))]
pub async fn list_members(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let after = q.after.as_deref().map(parse_user_id).transpose()?;
    let limit = q.limit.unwrap_or(100);
    let list = st
        .service
        .list_members(&actor, &parse_channel_id(&id)?, after.as_ref(), limit)
        .await?;
    let full = list.len() as u32 >= limit.clamp(1, st.service.limits().max_page);
    let body = MemberList {
        members: list.iter().map(|(m, v)| MemberDto::new(m, &v.user, v.online)).collect(),
        next: if full {
            list.last().map(|(m, _)| m.user_id.as_str())
        } else {
            None
        },
    };
    Ok(Json(body).into_response())
}

#[utoipa::path(delete, path = "/channels/{channel_id}/members/{user_id}", security(("master_token" = []), ("session_token" = [])), tag = "channels",
    responses((status = 204)))]
pub async fn remove_member(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath((id, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    st.service
        .remove_member(&actor, &parse_channel_id(&id)?, &parse_user_id(&user)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling user leaves the channel.
#[utoipa::path(post, path = "/channels/{channel_id}/leave", security(("session_token" = [])), tag = "channels", responses((status = 204)))]
pub async fn leave(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let me = actor
        .user()
        .cloned()
        .ok_or_else(|| DomainError::forbidden("the master token is not a member; remove a member instead"))?;
    st.service.remove_member(&actor, &parse_channel_id(&id)?, &me).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/channels/{channel_id}/read", security(("master_token" = []), ("session_token" = [])), request_body = ReadBody, tag = "channels",
    responses((status = 200, body = ReadResult)))]
pub async fn mark_read(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReadBody>,
) -> ApiResult<impl IntoResponse> {
    let s = st
        .service
        .mark_read(&actor, &parse_channel_id(&id)?, ChannelSeq(body.seq))
        .await?;
    Ok(Json(ReadResult { read_seq: s.0 }))
}
