//! `/v3/users`: create, list, view, update, delete, and session tokens, over the service's user and session APIs.

use axum::extract::State;
use confab_domain::model::{NewUser, User, UserPatch};
use confab_domain::{Millis, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::SendbirdState;
use crate::error::{Empty, Reply, SendbirdError, SendbirdResult};
use crate::extract::{ApiToken, JsonBody, PathParams, QueryParams, lenient_bool};

/// Sendbird's page size for users: 10 unless asked, at most 100.
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 100;

/// A user as Sendbird shows it. Strings are never `null` (the Python SDK refuses a null `profile_url`) and
/// times are integer milliseconds, 0 for "never".
#[derive(Serialize)]
pub struct UserObject {
    pub user_id: String,
    pub nickname: String,
    pub profile_url: String,
    pub require_auth_for_profile_image: bool,
    pub metadata: Map<String, Value>,
    /// Tokens are stored only as digests, so one is shown only in the response that issued it.
    pub access_token: String,
    pub created_at: Millis,
    pub is_online: bool,
    /// Confab has no deactivated users.
    pub is_active: bool,
    pub has_ever_logged_in: bool,
    pub last_seen_at: Millis,
    pub discovery_keys: [&'static str; 0],
    pub preferred_languages: [&'static str; 0],
    pub locale: &'static str,
}

impl UserObject {
    pub fn new(user: User, online: bool, access_token: Option<String>) -> Self {
        UserObject {
            has_ever_logged_in: online || user.last_seen_at.is_some(),
            last_seen_at: user.last_seen_at.unwrap_or(0),
            user_id: user.id.to_string(),
            nickname: user.nickname,
            profile_url: user.profile_url,
            require_auth_for_profile_image: false,
            metadata: user.metadata,
            access_token: access_token.unwrap_or_default(),
            created_at: user.created_at,
            is_online: online,
            is_active: !user.disabled,
            discovery_keys: [],
            preferred_languages: [],
            locale: "",
        }
    }
}

fn parse_user_id(raw: &str) -> SendbirdResult<UserId> {
    Ok(UserId::parse(raw)?)
}

#[derive(Deserialize)]
pub struct CreateUserBody {
    pub user_id: String,
    /// The Python SDK requires the field but allows `null`.
    pub nickname: Option<String>,
    pub profile_url: Option<String>,
    pub issue_access_token: Option<bool>,
    pub metadata: Option<Map<String, Value>>,
}

pub async fn create_user(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> SendbirdResult<Reply<UserObject>> {
    let actor = auth.actor();
    let new = NewUser {
        id: parse_user_id(&body.user_id)?,
        nickname: body.nickname.unwrap_or_default(),
        profile_url: body.profile_url.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        is_bot: false,
    };
    let user = st.service.create_user(&actor, new).await?;
    // Access tokens are the service's session tokens; they live as long as the server lets sessions live.
    let access_token = match body.issue_access_token {
        Some(true) => Some(st.service.issue_session(&actor, &user.id).await?.token),
        _ => None,
    };
    Ok(Reply(UserObject::new(user, false, access_token)))
}

#[derive(Deserialize)]
pub struct ListUsersQuery {
    /// The `next` of the previous page.
    pub token: Option<String>,
    pub limit: Option<u32>,
    /// `activated` (default), `deactivated` or `all`.
    pub active_mode: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub show_bot: Option<bool>,
    // Filters Sendbird offers and this surface does not yet: refused rather than silently ignored, so a
    // caller never mistakes the full list for a filtered one.
    pub user_ids: Option<String>,
    pub nickname: Option<String>,
    pub nickname_startswith: Option<String>,
    pub metadatakey: Option<String>,
    pub metadatavalues_in: Option<String>,
}

#[derive(Serialize)]
pub struct UserList {
    pub users: Vec<UserObject>,
    /// `""` on the last page.
    pub next: String,
}

/// Page tokens are the last user id of the page in hex: opaque, and safe in a query string even when a
/// client forgets to encode it (user ids may hold `+` and `&`).
pub fn page_token(last: &UserId) -> String {
    hex::encode(last.as_str())
}

pub fn parse_page_token(raw: &str) -> SendbirdResult<UserId> {
    let invalid = || SendbirdError::invalid("token", "not a page token of this server");
    let bytes = hex::decode(raw).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    UserId::parse(&text).map_err(|_| invalid())
}

pub async fn list_users(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    QueryParams(q): QueryParams<ListUsersQuery>,
) -> SendbirdResult<Reply<UserList>> {
    let unsupported = [
        ("user_ids", &q.user_ids),
        ("nickname", &q.nickname),
        ("nickname_startswith", &q.nickname_startswith),
        ("metadatakey", &q.metadatakey),
        ("metadatavalues_in", &q.metadatavalues_in),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, v)| v.is_some()) {
        return Err(SendbirdError::invalid(name, "this filter is not supported"));
    }
    // Sendbird's default lists activated users only.
    let active: Option<bool> = match q.active_mode.as_deref() {
        None | Some("activated") => Some(true),
        Some("deactivated") => Some(false),
        Some("all") => None,
        Some(other) => return Err(SendbirdError::invalid("active_mode", format!("unknown mode {other:?}"))),
    };
    let after = q
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(parse_page_token)
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let max_page = st.service.limits().max_page;
    // One more than asked tells whether another page exists, so the last page says `next: ""` and no
    // empty page follows it. If the service caps pages below that, a full page is taken to have a successor.
    let mut users = st.service.list_users(&auth.actor(), after.as_ref(), limit + 1).await?;
    let more = users.len() > limit as usize || (max_page <= limit && users.len() >= max_page as usize);
    users.truncate(limit as usize);
    let next = match (more, users.last()) {
        (true, Some(last)) => page_token(&last.user.id),
        _ => String::new(),
    };
    // Bots and the other activation state are filtered out of the page after paging, so such a page may be
    // shorter than `limit`.
    let show_bot = q.show_bot.unwrap_or(true);
    let users = users
        .into_iter()
        .filter(|v| show_bot || !v.user.is_bot)
        .filter(|v| active.is_none_or(|a| a != v.user.disabled))
        .map(|v| UserObject::new(v.user, v.online, None))
        .collect();
    Ok(Reply(UserList { users, next }))
}

pub async fn view_user(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<UserObject>> {
    let v = st.service.get_user(&auth.actor(), &parse_user_id(&id)?).await?;
    Ok(Reply(UserObject::new(v.user, v.online, None)))
}

#[derive(Deserialize)]
pub struct UpdateUserBody {
    pub nickname: Option<String>,
    pub profile_url: Option<String>,
    pub issue_access_token: Option<bool>,
    pub is_active: Option<bool>,
}

pub async fn update_user(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<UpdateUserBody>,
) -> SendbirdResult<Reply<UserObject>> {
    let actor = auth.actor();
    let id = parse_user_id(&id)?;
    // Deactivating blocks the account (sessions revoked, sends refused); activating unblocks it.
    if let Some(active) = body.is_active {
        st.service.set_blocked(&actor, &id, !active).await?;
    }
    let patch = UserPatch {
        nickname: body.nickname,
        profile_url: body.profile_url,
        metadata: None,
        disabled: None,
    };
    let v = st.service.update_user(&actor, &id, patch).await?;
    // A new access token replaces the old one: the user's tokens are revoked (their open connections close)
    // before it is issued. Confab does not tell access and session tokens apart, so all of them go.
    let access_token = match body.issue_access_token {
        Some(true) => {
            st.service.revoke_sessions(&actor, &id).await?;
            Some(st.service.issue_session(&actor, &id).await?.token)
        }
        _ => None,
    };
    Ok(Reply(UserObject::new(v.user, v.online, access_token)))
}

pub async fn delete_user(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<Empty>> {
    st.service.delete_user(&auth.actor(), &parse_user_id(&id)?).await?;
    Ok(Reply(Empty {}))
}

/// `DELETE /v3/users/{user_id}/token`: revokes every token of the user; their open connections close.
pub async fn revoke_tokens(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<Empty>> {
    let id = parse_user_id(&id)?;
    let actor = auth.actor();
    st.service.get_user(&actor, &id).await?;
    st.service.revoke_sessions(&actor, &id).await?;
    Ok(Reply(Empty {}))
}

#[derive(Deserialize)]
pub struct IssueTokenBody {
    /// When the token should expire, in Unix milliseconds; the server's session lifetime caps it.
    pub expires_at: Option<Millis>,
}

#[derive(Serialize)]
pub struct SessionToken {
    pub token: String,
    /// Unix milliseconds; 0 when the server lets sessions live until revoked.
    pub expires_at: Millis,
}

pub async fn issue_token(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<IssueTokenBody>,
) -> SendbirdResult<Reply<SessionToken>> {
    let s = st
        .service
        .issue_session_until(&auth.actor(), &parse_user_id(&id)?, body.expires_at)
        .await?;
    Ok(Reply(SessionToken {
        token: s.token,
        expires_at: s.expires_at.unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = UserId::parse("a+b&c").unwrap();
        let t = page_token(&id);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(parse_page_token(&t).unwrap(), id);
        for bad in ["zz", "20", "ff"] {
            assert_eq!(parse_page_token(bad).unwrap_err().code().code(), 400111, "{bad}");
        }
    }

    #[test]
    fn user_objects_never_carry_nulls() {
        let user = User {
            id: UserId::parse("u1").unwrap(),
            nickname: String::new(),
            profile_url: String::new(),
            metadata: Map::new(),
            is_bot: false,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_000,
            last_seen_at: None,
            disabled: false,
        };
        let v = serde_json::to_value(UserObject::new(user, false, None)).unwrap();
        let obj = v.as_object().unwrap();
        assert!(obj.values().all(|v| !v.is_null()), "{v}");
        assert_eq!(v["profile_url"], "");
        assert_eq!(v["access_token"], "");
        assert_eq!(v["last_seen_at"], 0);
        assert_eq!(v["created_at"], 1_700_000_000_000i64);
        assert_eq!(v["metadata"], serde_json::json!({}));
    }
}
