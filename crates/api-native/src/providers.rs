use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, Auth};

#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    /// Each provider's configuration (`name`, `kind`, `base_url`, `model`, `api_key_env`, timeouts, limits),
    /// its `source` (`config_file` or `admin_api`) and whether its key variable is set (`api_key_set`).
    /// Keys themselves are never shown.
    #[schema(value_type = Vec<Object>)]
    pub providers: Vec<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderName {
    pub name: String,
}

#[utoipa::path(get, path = "/providers", security(("master_token" = [])), tag = "bots", responses((status = 200, body = ProviderList)))]
pub async fn list_providers(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<impl IntoResponse> {
    Ok(Json(ProviderList {
        providers: st.service.list_providers(&actor)?,
    }))
}

/// Adds or replaces a provider (master token). The body is a provider configuration as in the `[[providers]]`
/// section of the configuration file; the API key is named by `api_key_env`, never sent, and only variables
/// the configuration file allows may be named (`[provider_api]`: by default names starting with
/// `CONFAB_PROVIDER_KEY_`); any other is a 400.
#[utoipa::path(post, path = "/providers", security(("master_token" = [])), tag = "bots", request_body(content = Object),
    responses((status = 201, body = ProviderName), (status = 400, body = ProblemBody)))]
pub async fn add_provider(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<impl IntoResponse> {
    let name = st.service.add_provider(&actor, body).await?;
    Ok((StatusCode::CREATED, Json(ProviderName { name })))
}

#[utoipa::path(delete, path = "/providers/{name}", security(("master_token" = [])), tag = "bots", responses((status = 204)))]
pub async fn delete_provider(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_provider(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
