//! A channel as clients see it (with the calling member's read position) and its members.

use confab_domain::Millis;
use confab_domain::model::{Channel, Member, MemberChannel, User};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::users::UserDto;

#[derive(Serialize, ToSchema)]
pub struct ChannelDto<'a> {
    pub id: &'a str,
    /// `direct` (distinct 1:1) or `group`.
    #[schema(value_type = String, example = "group")]
    pub kind: &'static str,
    pub name: &'a str,
    pub cover_url: &'a str,
    pub custom_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<&'a str>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Sequence of the newest message (0 when empty).
    pub last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<Millis>,
    pub member_count: u32,
    /// For the calling member: read position and unread count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<u64>,
}

impl<'a> ChannelDto<'a> {
    pub fn new(c: &'a Channel) -> Self {
        ChannelDto {
            id: c.id.as_str(),
            kind: c.kind.as_str(),
            name: &c.name,
            cover_url: &c.cover_url,
            custom_type: &c.custom_type,
            data: c.data.as_ref(),
            created_by: c.created_by.as_ref().map(|u| u.as_str()),
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_seq: c.last_seq.0,
            last_message_at: c.last_message_at,
            member_count: c.member_count,
            read_seq: None,
            unread_count: None,
        }
    }

    pub fn for_member(mc: &'a MemberChannel) -> Self {
        ChannelDto {
            read_seq: Some(mc.read_seq.0),
            unread_count: Some(mc.unread_count()),
            ..ChannelDto::new(&mc.channel)
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemberDto<'a> {
    #[serde(flatten)]
    pub user: UserDto<'a>,
    pub joined_at: Millis,
    pub read_seq: u64,
}

impl<'a> MemberDto<'a> {
    pub fn new(m: &'a Member, u: &'a User, online: bool) -> Self {
        MemberDto {
            user: UserDto::new(u, online),
            joined_at: m.joined_at,
            read_seq: m.read_seq.0,
        }
    }
}
