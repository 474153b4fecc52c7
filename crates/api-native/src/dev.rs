//! The development login (`serve --dev-login`, `[web] dev_login`): signs in as any user id, creating the
//! user, so a newcomer can chat from the web app without minting tokens. Off by default; when off,
//! `POST` answers 404 and `GET` says it is off.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::DomainError;
use confab_domain::model::NewUser;
use confab_service::Actor;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ProblemBody};
use crate::extract::ApiJson;
use crate::users::{SessionToken, parse_user_id};

#[derive(Serialize, ToSchema)]
pub struct DevLoginStatus {
    pub enabled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevLoginBody {
    pub user_id: String,
    /// Used when the user is created.
    #[serde(default)]
    pub nickname: Option<String>,
}

/// Whether the development login is on.
#[utoipa::path(get, path = "/dev/login", security(()), tag = "users", responses((status = 200, body = DevLoginStatus)))]
pub async fn status(State(st): State<AppState>) -> Json<DevLoginStatus> {
    Json(DevLoginStatus { enabled: st.dev_login })
}

/// Signs in as a user (created if new), without credentials. Only with the server's development flag.
#[utoipa::path(post, path = "/dev/login", security(()), tag = "users", request_body = DevLoginBody,
    responses((status = 201, body = SessionToken), (status = 404, body = ProblemBody)))]
pub async fn login(State(st): State<AppState>, ApiJson(body): ApiJson<DevLoginBody>) -> ApiResult<impl IntoResponse> {
    if !st.dev_login {
        return Err(ApiError::request(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "the development login is off (serve --dev-login)",
        ));
    }
    let id = parse_user_id(&body.user_id)?;
    let created = st
        .service
        .create_user(
            &Actor::Admin,
            NewUser {
                nickname: body
                    .nickname
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| id.to_string()),
                id: id.clone(),
                profile_url: String::new(),
                metadata: Default::default(),
                is_bot: false,
            },
        )
        .await;
    match created {
        Ok(_) | Err(DomainError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let user = st.service.get_user(&Actor::Admin, &id).await?;
    if user.user.is_bot {
        return Err(ApiError::request(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a bot cannot sign in",
        ));
    }
    let s = st.service.issue_session(&Actor::Admin, &id).await?;
    Ok((StatusCode::CREATED, Json(SessionToken::from(s))))
}
