//! A user (or a bot's account) as clients see it.

use confab_domain::Millis;
use confab_domain::model::User;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct UserDto<'a> {
    pub id: &'a str,
    pub nickname: &'a str,
    pub profile_url: &'a str,
    /// The application's key/value pairs: shown to the user themselves and the application, empty for
    /// other users.
    #[schema(value_type = Object)]
    pub metadata: &'a serde_json::Map<String, Value>,
    pub is_bot: bool,
    pub online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<Millis>,
    pub created_at: Millis,
}

impl<'a> UserDto<'a> {
    pub fn new(u: &'a User, online: bool) -> Self {
        UserDto {
            id: u.id.as_str(),
            nickname: &u.nickname,
            profile_url: &u.profile_url,
            metadata: &u.metadata,
            is_bot: u.is_bot,
            online,
            last_seen_at: u.last_seen_at,
            created_at: u.created_at,
        }
    }
}
