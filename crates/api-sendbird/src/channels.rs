//! `/v3/group_channels`: create (distinct or not), list, view, update, delete, invite, leave, members.
//!
//! Confab has no public, super or ephemeral groups, no invitations (everyone invited has joined) and no
//! operators: `is_public`/`is_super` set to true are refused, `operator_ids`, `inviter_id` and
//! `invitation_status` are accepted and have no effect.

use axum::extract::State;
use confab_domain::model::ChannelPatch;
use confab_domain::{ChannelId, UserId, now_millis};
use confab_service::NewGroup;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SendbirdState;
use crate::dto::{self, ChannelObject, MemberObject};
use crate::error::{Empty, Reply, SendbirdError, SendbirdResult};
use crate::extract::{ApiToken, JsonBody, PathParams, QueryParams, lenient_bool};

/// Sendbird's page size for channels and members: 10 unless asked, at most 100.
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 100;

/// Sendbird's default name of a group channel created without one.
const DEFAULT_NAME: &str = "group channel";

/// A `channel_url` given at creation, checked against Sendbird's rule: 4 to 100 letters, digits,
/// underscores or hyphens. Existing channels (created natively, e.g. `dm.a.b`) are reachable by any valid id.
pub fn parse_new_channel_url(raw: &str) -> SendbirdResult<ChannelId> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !(4..=100).contains(&raw.len()) || !raw.chars().all(ok_char) {
        return Err(SendbirdError::invalid(
            "channel_url",
            "must be 4 to 100 letters, digits, underscores or hyphens",
        ));
    }
    Ok(ChannelId::parse(raw)?)
}

pub fn parse_channel_url(raw: &str) -> SendbirdResult<ChannelId> {
    Ok(ChannelId::parse(raw)?)
}

pub fn parse_user_ids<'a>(raw: impl IntoIterator<Item = &'a str>) -> SendbirdResult<Vec<UserId>> {
    raw.into_iter().map(|s| Ok(UserId::parse(s)?)).collect()
}

/// A comma-separated list from a query string (`a,b,c`), blanks dropped.
pub fn csv(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Page tokens are the last id of the page in hex, as for users.
fn page_token(last: &str) -> String {
    hex::encode(last)
}

fn decode_page_token(raw: &str) -> SendbirdResult<String> {
    let invalid = || SendbirdError::invalid("token", "not a page token of this server");
    let bytes = hex::decode(raw).map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

fn token_after<T>(
    token: Option<&str>,
    parse: impl Fn(&str) -> Result<T, confab_domain::DomainError>,
) -> SendbirdResult<Option<T>> {
    match token.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => {
            let text = decode_page_token(t)?;
            parse(&text)
                .map(Some)
                .map_err(|_| SendbirdError::invalid("token", "not a page token of this server"))
        }
    }
}

fn refuse_unsupported_modes(is_public: Option<bool>, is_super: Option<bool>) -> SendbirdResult<()> {
    if is_public == Some(true) {
        return Err(SendbirdError::invalid(
            "is_public",
            "public group channels are not supported",
        ));
    }
    if is_super == Some(true) {
        return Err(SendbirdError::invalid(
            "is_super",
            "supergroup channels are not supported",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct UserRef {
    pub user_id: String,
}

#[derive(Deserialize)]
pub struct CreateChannelBody {
    /// `[{user_id}]`; the Python SDK requires this form, others send `user_ids`. Both are merged.
    #[serde(default)]
    pub users: Vec<UserRef>,
    #[serde(default)]
    pub user_ids: Vec<String>,
    pub channel_url: Option<String>,
    pub name: Option<String>,
    pub cover_url: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<String>,
    pub is_distinct: Option<bool>,
    pub is_public: Option<bool>,
    pub is_super: Option<bool>,
    pub operator_ids: Option<Vec<String>>,
    pub inviter_id: Option<String>,
}

/// Creates a group channel.
///
/// `is_distinct: true` makes the member set the channel's identity: while a distinct channel created with
/// exactly these members exists, it is returned instead of creating another (whatever `channel_url` says).
/// The set is the one the channel was created with; members who join or leave later do not change it.
/// Without `channel_url` the server generates one; a taken `channel_url` is 400202, an unknown user 400201.
pub async fn create_channel(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    JsonBody(body): JsonBody<CreateChannelBody>,
) -> SendbirdResult<Reply<ChannelObject>> {
    refuse_unsupported_modes(body.is_public, body.is_super)?;
    let mut members = parse_user_ids(
        body.users
            .iter()
            .map(|u| u.user_id.as_str())
            .chain(body.user_ids.iter().map(String::as_str)),
    )?;
    members.sort();
    members.dedup();
    if members.is_empty() {
        return Err(SendbirdError::missing("user_ids"));
    }
    let id = body.channel_url.as_deref().map(parse_new_channel_url).transpose()?;
    let group = NewGroup {
        id,
        name: body.name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
        cover_url: body.cover_url.unwrap_or_default(),
        custom_type: body.custom_type.unwrap_or_default(),
        data: body.data.filter(|d| !d.is_empty()).map(Value::String),
        members,
        distinct: body.is_distinct.unwrap_or(false),
    };
    let channel = st.service.create_group(&auth.actor(), group).await?;
    Ok(Reply(dto::render_channel(&st.service, channel, true).await?))
}

#[derive(Deserialize)]
pub struct ListChannelsQuery {
    pub token: Option<String>,
    pub limit: Option<u32>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub show_member: Option<bool>,
    /// Only these channels (comma-separated); no paging.
    pub channel_urls: Option<String>,
    /// Only channels this user is a member of.
    pub user_id: Option<String>,
    /// Comma-separated; one user only (the same as `user_id`).
    pub members_include_in: Option<String>,
    // Filters Sendbird offers and this surface does not: refused rather than ignored, so a caller never
    // mistakes the full list for a filtered one.
    pub custom_types: Option<String>,
    pub custom_type_startswith: Option<String>,
    pub name_contains: Option<String>,
    pub name_startswith: Option<String>,
    pub members_exactly_in: Option<String>,
    pub members_nickname: Option<String>,
    pub members_nickname_contains: Option<String>,
    pub metadata_key: Option<String>,
}

#[derive(Serialize)]
pub struct ChannelList {
    pub channels: Vec<ChannelObject>,
    /// `""` on the last page.
    pub next: String,
    pub ts: i64,
}

/// Lists group channels in `channel_url` order (Sendbird's `order` is not supported and ignored, as is
/// `show_empty`: empty channels are always listed).
pub async fn list_channels(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    QueryParams(q): QueryParams<ListChannelsQuery>,
) -> SendbirdResult<Reply<ChannelList>> {
    let unsupported = [
        ("custom_types", &q.custom_types),
        ("custom_type_startswith", &q.custom_type_startswith),
        ("name_contains", &q.name_contains),
        ("name_startswith", &q.name_startswith),
        ("members_exactly_in", &q.members_exactly_in),
        ("members_nickname", &q.members_nickname),
        ("members_nickname_contains", &q.members_nickname_contains),
        ("metadata_key", &q.metadata_key),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, v)| v.is_some()) {
        return Err(SendbirdError::invalid(name, "this filter is not supported"));
    }
    let actor = auth.actor();
    let show_members = q.show_member.unwrap_or(false);
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let ts = now_millis();

    if let Some(urls) = q.channel_urls.as_deref() {
        let mut channels = Vec::new();
        for url in csv(urls).take(MAX_LIMIT as usize) {
            match st.service.get_channel(&actor, &parse_channel_url(url)?).await {
                Ok(c) => channels.push(dto::render_channel(&st.service, c.channel, show_members).await?),
                Err(confab_domain::DomainError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Reply(ChannelList {
            channels,
            next: String::new(),
            ts,
        }));
    }

    let member = match (q.user_id.as_deref(), q.members_include_in.as_deref()) {
        (Some(u), None) => Some(UserId::parse(u)?),
        (None, Some(list)) => {
            let ids: Vec<&str> = csv(list).collect();
            match ids.as_slice() {
                [one] => Some(UserId::parse(one)?),
                _ => {
                    return Err(SendbirdError::invalid(
                        "members_include_in",
                        "only one user is supported",
                    ));
                }
            }
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(SendbirdError::invalid(
                "members_include_in",
                "give user_id or members_include_in, not both",
            ));
        }
    };
    let after = token_after(q.token.as_deref(), ChannelId::parse)?;
    let max_page = st.service.limits().max_page;
    // One more than asked tells whether another page exists (see users.rs).
    let mut page = st
        .service
        .list_channels(&actor, member.as_ref(), after.as_ref(), limit + 1)
        .await?;
    let more = page.len() > limit as usize || (max_page <= limit && page.len() >= max_page as usize);
    page.truncate(limit as usize);
    let next = match (more, page.last()) {
        (true, Some(last)) => page_token(last.channel.id.as_str()),
        _ => String::new(),
    };
    let mut channels = Vec::with_capacity(page.len());
    for c in page {
        channels.push(dto::render_channel(&st.service, c.channel, show_members).await?);
    }
    Ok(Reply(ChannelList { channels, next, ts }))
}

#[derive(Deserialize)]
pub struct ViewChannelQuery {
    /// Default true: one channel's first members are cheap to show.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub show_member: Option<bool>,
}

pub async fn view_channel(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    QueryParams(q): QueryParams<ViewChannelQuery>,
) -> SendbirdResult<Reply<ChannelObject>> {
    let c = st.service.get_channel(&auth.actor(), &parse_channel_url(&url)?).await?;
    let show = q.show_member.unwrap_or(true);
    Ok(Reply(dto::render_channel(&st.service, c.channel, show).await?))
}

#[derive(Deserialize)]
pub struct UpdateChannelBody {
    pub name: Option<String>,
    pub cover_url: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<String>,
    pub is_distinct: Option<bool>,
    pub is_public: Option<bool>,
    pub is_super: Option<bool>,
    pub access_code: Option<String>,
    pub operator_ids: Option<Vec<String>>,
}

pub async fn update_channel(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    JsonBody(body): JsonBody<UpdateChannelBody>,
) -> SendbirdResult<Reply<ChannelObject>> {
    refuse_unsupported_modes(body.is_public, body.is_super)?;
    let actor = auth.actor();
    let id = parse_channel_url(&url)?;
    let current = st.service.get_channel(&actor, &id).await?.channel;
    if let Some(d) = body.is_distinct
        && d != current.distinct
    {
        return Err(SendbirdError::invalid(
            "is_distinct",
            "a channel is distinct or not from its creation",
        ));
    }
    if body.access_code.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(SendbirdError::invalid("access_code", "access codes are not supported"));
    }
    let patch = ChannelPatch {
        name: body.name,
        cover_url: body.cover_url,
        custom_type: body.custom_type,
        data: body.data.map(|d| (!d.is_empty()).then_some(Value::String(d))),
    };
    let channel = st.service.update_channel(&actor, &id, patch).await?;
    Ok(Reply(dto::render_channel(&st.service, channel, true).await?))
}

pub async fn delete_channel(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
) -> SendbirdResult<Reply<Empty>> {
    st.service
        .delete_channel(&auth.actor(), &parse_channel_url(&url)?)
        .await?;
    Ok(Reply(Empty {}))
}

/// A `user_ids` list that must name someone.
fn required_user_ids(ids: &[String]) -> SendbirdResult<Vec<UserId>> {
    let users = parse_user_ids(ids.iter().map(String::as_str))?;
    if users.is_empty() {
        return Err(SendbirdError::missing("user_ids"));
    }
    Ok(users)
}

#[derive(Deserialize)]
pub struct InviteBody {
    pub user_ids: Vec<String>,
    pub inviter_id: Option<String>,
    pub invitation_status: Option<Value>,
    pub hidden_status: Option<Value>,
}

/// Adds members at once (no invitation to accept). Unknown users are 400201; current members are ignored.
pub async fn invite(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    JsonBody(body): JsonBody<InviteBody>,
) -> SendbirdResult<Reply<ChannelObject>> {
    let users = required_user_ids(&body.user_ids)?;
    let channel = st
        .service
        .invite(&auth.actor(), &parse_channel_url(&url)?, users)
        .await?;
    Ok(Reply(dto::render_channel(&st.service, channel, true).await?))
}

#[derive(Deserialize)]
pub struct LeaveBody {
    pub user_ids: Vec<String>,
    pub should_leave_all: Option<bool>,
    pub should_remove_operator_status: Option<bool>,
    pub reason: Option<String>,
}

/// Removes the users from the channel, one after another; a user who is not a member stops the call with
/// 400108 (those before it have left).
pub async fn leave(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    JsonBody(body): JsonBody<LeaveBody>,
) -> SendbirdResult<Reply<Empty>> {
    if body.should_leave_all == Some(true) {
        return Err(SendbirdError::invalid(
            "should_leave_all",
            "leaving every channel at once is not supported",
        ));
    }
    let users = required_user_ids(&body.user_ids)?;
    let id = parse_channel_url(&url)?;
    let actor = auth.actor();
    for u in &users {
        st.service.remove_member(&actor, &id, u).await?;
    }
    Ok(Reply(Empty {}))
}

#[derive(Deserialize)]
pub struct ListMembersQuery {
    pub token: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Serialize)]
pub struct MemberList {
    pub members: Vec<MemberObject>,
    pub next: String,
}

pub async fn list_members(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    QueryParams(q): QueryParams<ListMembersQuery>,
) -> SendbirdResult<Reply<MemberList>> {
    let id = parse_channel_url(&url)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let after = token_after(q.token.as_deref(), UserId::parse)?;
    let max_page = st.service.limits().max_page;
    let mut page = st
        .service
        .list_members(&auth.actor(), &id, after.as_ref(), limit + 1)
        .await?;
    let more = page.len() > limit as usize || (max_page <= limit && page.len() >= max_page as usize);
    page.truncate(limit as usize);
    let next = match (more, page.last()) {
        (true, Some((m, _))) => page_token(m.user_id.as_str()),
        _ => String::new(),
    };
    Ok(Reply(MemberList {
        members: page.iter().map(|(_, v)| MemberObject::new(v)).collect(),
        next,
    }))
}

#[derive(Serialize)]
pub struct MembershipCheck {
    pub is_member: bool,
    /// `joined` or `none` (Confab has no pending invitations).
    pub state: &'static str,
}

pub async fn check_member(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams((url, user)): PathParams<(String, String)>,
) -> SendbirdResult<Reply<MembershipCheck>> {
    let member = st
        .service
        .member(&auth.actor(), &parse_channel_url(&url)?, &UserId::parse(&user)?)
        .await?;
    Ok(Reply(MembershipCheck {
        is_member: member.is_some(),
        state: if member.is_some() { "joined" } else { "none" },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_channel_urls_follow_sendbird_rules() {
        for ok in ["abcd", "room_1-B", &"x".repeat(100)] {
            assert!(parse_new_channel_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "abc",
            "a.b.c.d",
            "room 1",
            "room/1",
            "",
            &"x".repeat(101),
            "dm.alice.bob",
        ] {
            assert_eq!(parse_new_channel_url(bad).unwrap_err().code().code(), 400111, "{bad}");
        }
        // Any channel id is reachable once it exists.
        assert!(parse_channel_url("dm.alice.bob").is_ok());
    }

    #[test]
    fn csv_drops_blanks() {
        assert_eq!(csv(" a, ,b,").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(csv("").count(), 0);
    }

    #[test]
    fn page_tokens_round_trip() {
        let t = page_token("room&1");
        assert_eq!(
            token_after(Some(&t), ChannelId::parse).unwrap().unwrap().as_str(),
            "room&1"
        );
        assert!(token_after(Some(""), ChannelId::parse).unwrap().is_none());
        assert_eq!(
            token_after(Some("zz"), ChannelId::parse).unwrap_err().code().code(),
            400111
        );
        // Valid hex of an invalid id.
        assert_eq!(
            token_after(Some(&hex::encode("a b")), ChannelId::parse)
                .unwrap_err()
                .code()
                .code(),
            400111
        );
    }
}
