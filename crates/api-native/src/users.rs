use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::UserId;
use confab_domain::model::{NewUser, UserPatch};
use confab_wire::UserDto;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};

pub fn parse_user_id(raw: &str) -> ApiResult<UserId> {
    Ok(UserId::parse(raw)?)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// 1 to 80 printable ASCII characters other than `/ ? # % \ "`.
    pub id: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub profile_url: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    pub is_bot: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    pub nickname: Option<String>,
    pub profile_url: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Return items after this id (the `next` of the previous page).
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList<'a> {
    pub users: Vec<UserDto<'a>>,
    /// Cursor for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<&'a str>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionToken {
    /// Shown once. Clients send it as `Authorization: Bearer <token>` or `?token=` on the WebSocket.
    pub token: String,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl From<confab_service::IssuedSession> for SessionToken {
    fn from(s: confab_service::IssuedSession) -> Self {
        SessionToken {
            token: s.token,
            user_id: s.user_id.to_string(),
            expires_at: s.expires_at,
        }
    }
}

#[utoipa::path(post, path = "/users", security(("master_token" = [])), request_body = CreateUserBody, tag = "users",
    responses((status = 201, body = UserDto), (status = 409, body = ProblemBody), (status = 400, body = ProblemBody)))]
pub async fn create_user(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> ApiResult<impl IntoResponse> {
    let user = st
        .service
        .create_user(
            &actor,
            NewUser {
                nickname: if body.nickname.is_empty() {
                    body.id.clone()
                } else {
                    body.nickname
                },
                id: parse_user_id(&body.id)?,
                profile_url: body.profile_url,
                metadata: body.metadata,
                is_bot: body.is_bot,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(UserDto::new(&user, false)).into_response()))
}

#[utoipa::path(get, path = "/users", security(("master_token" = []), ("session_token" = [])), params(PageQuery), tag = "users", responses((status = 200, body = UserList)))]
pub async fn list_users(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let after = q.after.as_deref().map(parse_user_id).transpose()?;
    let limit = q.limit.unwrap_or(50);
    let users = st.service.list_users(&actor, after.as_ref(), limit).await?;
    let full = users.len() as u32 >= limit.clamp(1, st.service.limits().max_page);
    let body = UserList {
        users: users.iter().map(|v| UserDto::new(&v.user, v.online)).collect(),
        next: if full {
            users.last().map(|v| v.user.id.as_str())
        } else {
            None
        },
    };
    Ok(Json(body).into_response())
}

#[utoipa::path(get, path = "/users/{user_id}", security(("master_token" = []), ("session_token" = [])), tag = "users",
    responses((status = 200, body = UserDto), (status = 404, body = ProblemBody)))]
pub async fn get_user(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let v = st.service.get_user(&actor, &parse_user_id(&id)?).await?;
    Ok(Json(UserDto::new(&v.user, v.online)).into_response())
}

/// The calling user (session tokens only).
#[utoipa::path(get, path = "/me", security(("session_token" = [])), tag = "users", responses((status = 200, body = UserDto)))]
pub async fn me(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<impl IntoResponse> {
    let id = actor
        .user()
        .cloned()
        .ok_or_else(|| confab_domain::DomainError::forbidden("the master token is not a user"))?;
    let v = st.service.get_user(&actor, &id).await?;
    Ok(Json(UserDto::new(&v.user, v.online)).into_response())
}

#[utoipa::path(patch, path = "/users/{user_id}", security(("master_token" = []), ("session_token" = [])), request_body = UpdateUserBody, tag = "users",
    responses((status = 200, body = UserDto)))]
pub async fn update_user(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateUserBody>,
) -> ApiResult<impl IntoResponse> {
    let patch = UserPatch {
        nickname: body.nickname,
        profile_url: body.profile_url,
        metadata: body.metadata,
        disabled: None,
    };
    let v = st.service.update_user(&actor, &parse_user_id(&id)?, patch).await?;
    Ok(Json(UserDto::new(&v.user, v.online)).into_response())
}

#[utoipa::path(delete, path = "/users/{user_id}", security(("master_token" = [])), tag = "users", responses((status = 204)))]
pub async fn delete_user(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_user(&actor, &parse_user_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a client session token for the user (master token only).
#[utoipa::path(post, path = "/users/{user_id}/sessions", security(("master_token" = [])), tag = "users",
    responses((status = 201, body = SessionToken)))]
pub async fn issue_session(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let s = st.service.issue_session(&actor, &parse_user_id(&id)?).await?;
    Ok((StatusCode::CREATED, Json(SessionToken::from(s))))
}

/// Revokes every session token of the user.
#[utoipa::path(delete, path = "/users/{user_id}/sessions", security(("master_token" = []), ("session_token" = [])), tag = "users", responses((status = 204)))]
pub async fn revoke_sessions(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.revoke_sessions(&actor, &parse_user_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
