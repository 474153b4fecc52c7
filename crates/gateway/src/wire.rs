//! The native wire format: JSON shapes shared by the REST API and the WebSocket protocol
//! (`docs/protocol.md`). Domain types are converted here; they are never serialized as-is.

use std::collections::BTreeMap;

use confab_domain::model::{Channel, FileObject, Member, MemberChannel, Message, MessageKind, User};
use confab_domain::{ChannelId, ChannelSeq, DomainError, FileId, MessageId, Millis, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Where a stored file is served from.
pub fn file_url(id: &FileId) -> String {
    format!("/api/v1/files/{id}")
}

#[derive(Serialize, ToSchema)]
pub struct FileDto<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub size: u64,
    /// Sniffed from the content when uploaded.
    pub content_type: &'a str,
    /// Relative URL; members of the channel fetch it with their session token.
    pub url: String,
    pub sha256: &'a str,
}

impl<'a> From<&'a FileObject> for FileDto<'a> {
    fn from(f: &'a FileObject) -> Self {
        FileDto {
            id: f.id.as_str(),
            name: &f.name,
            size: f.size,
            content_type: &f.content_type,
            url: file_url(&f.id),
            sha256: &f.sha256,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessageDto<'a> {
    pub id: i64,
    pub channel_id: &'a str,
    /// Position in the channel: 1, 2, 3… with no gaps.
    pub seq: u64,
    /// Absent for admin messages sent by the application.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<&'a str>,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "text")]
    pub kind: &'static str,
    pub text: &'a str,
    pub custom_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub payload: Option<&'a Value>,
    #[schema(value_type = Vec<String>)]
    pub mentions: &'a [UserId],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<i64>,
    pub reply_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileDto<'a>>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub edited: bool,
    pub deleted: bool,
    /// Present on a bot's reply: its state (`generating`, then one of `complete`, `stopped`, `failed`,
    /// `interrupted`), the triggering message, and for failures a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyDto<'a>>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplyDto<'a> {
    #[schema(value_type = String, example = "generating")]
    pub state: &'static str,
    /// The message the reply answers; absent for a message an application streamed on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> From<&'a Message> for MessageDto<'a> {
    fn from(m: &'a Message) -> Self {
        MessageDto {
            id: m.id.0,
            channel_id: m.channel_id.as_str(),
            seq: m.seq.0,
            sender_id: m.sender_id.as_ref().map(|u| u.as_str()),
            kind: m.kind.as_str(),
            text: &m.text,
            custom_type: &m.custom_type,
            data: m.data.as_ref(),
            payload: m.payload.as_ref(),
            mentions: &m.mentions,
            client_msg_id: m.client_msg_id.as_deref(),
            parent_id: m.parent_id.map(|p| p.0),
            reply_count: m.reply_count,
            file: m.file.as_ref().map(FileDto::from),
            created_at: m.created_at,
            updated_at: m.updated_at,
            edited: m.edited,
            deleted: m.deleted,
            reply: m.reply.as_ref().map(|r| ReplyDto {
                state: r.state.as_str(),
                trigger_id: r.trigger_id.map(|t| t.0),
                reason: r.reason.as_deref(),
            }),
        }
    }
}

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

/// The content of a message to send, shared by `POST /channels/{id}/messages` and the WebSocket `send` frame.
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct SendMessageBody {
    /// `text` (default), `image`, `file`, `custom` or `admin` (application only).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub custom_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub mentions: Vec<UserId>,
    /// Idempotency key: a retried send with the same key returns the original message.
    #[serde(default)]
    pub client_msg_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<i64>,
    /// An uploaded file (`POST /api/v1/files`) for image and file messages.
    #[serde(default)]
    pub file_id: Option<String>,
    /// Application only: send as this member.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub sender_id: Option<UserId>,
}

impl SendMessageBody {
    pub fn into_new_message(self, channel_id: ChannelId) -> Result<confab_domain::model::NewMessage, DomainError> {
        let kind = match self.kind.as_deref() {
            None => MessageKind::Text,
            Some(k) => MessageKind::parse(k)
                .ok_or_else(|| DomainError::invalid("type", "must be one of text, image, file, custom, admin"))?,
        };
        Ok(confab_domain::model::NewMessage {
            channel_id,
            sender_id: self.sender_id,
            kind,
            text: self.text,
            custom_type: self.custom_type,
            data: self.data,
            payload: self.payload,
            mentions: self.mentions,
            client_msg_id: self.client_msg_id,
            parent_id: self.parent_id.map(MessageId),
            file_id: self.file_id.as_deref().map(FileId::parse).transpose()?,
            reply: None,
            flags: Vec::new(),
        })
    }
}

// ---- WebSocket frames ----

/// Frames a client sends.
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame. `resume` maps channel ids to the last sequence the client has.
    Hello {
        #[serde(default)]
        resume: BTreeMap<ChannelId, u64>,
    },
    Send {
        req_id: Option<String>,
        channel_id: ChannelId,
        #[serde(flatten)]
        body: Box<SendMessageBodyFrame>,
    },
    Typing {
        channel_id: ChannelId,
        active: bool,
    },
    Read {
        channel_id: ChannelId,
        seq: u64,
    },
    Ping {
        req_id: Option<String>,
    },
    /// Stop a bot reply that is still generating.
    Stop {
        req_id: Option<String>,
        message_id: i64,
    },
}

/// `SendMessageBody` without `deny_unknown_fields` (serde cannot combine it with `flatten`) and without
/// `sender_id` (a session sends as its own user).
#[derive(Deserialize, Debug, Default)]
pub struct SendMessageBodyFrame {
    #[serde(rename = "message_type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub custom_type: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub mentions: Vec<UserId>,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<i64>,
    #[serde(default)]
    pub file_id: Option<String>,
}

impl From<SendMessageBodyFrame> for SendMessageBody {
    fn from(f: SendMessageBodyFrame) -> Self {
        SendMessageBody {
            kind: f.kind,
            text: f.text,
            custom_type: f.custom_type,
            data: f.data,
            payload: f.payload,
            mentions: f.mentions,
            client_msg_id: f.client_msg_id,
            parent_id: f.parent_id,
            file_id: f.file_id,
            sender_id: None,
        }
    }
}

/// Frames the server sends. Serialized once per event and shared by every recipient.
#[derive(Serialize)]
#[serde(tag = "type")]
pub enum ServerFrame<'a> {
    #[serde(rename = "welcome")]
    Welcome {
        session_id: u64,
        user_id: &'a str,
        heartbeat_ms: u64,
        max_frame_bytes: usize,
    },
    #[serde(rename = "message.new")]
    MessageNew {
        channel_id: &'a str,
        seq: u64,
        message: MessageDto<'a>,
    },
    #[serde(rename = "message.updated")]
    MessageUpdated {
        channel_id: &'a str,
        seq: u64,
        message: MessageDto<'a>,
    },
    /// A piece of a bot reply as it streams.
    #[serde(rename = "message.delta")]
    MessageDelta {
        channel_id: &'a str,
        seq: u64,
        message_id: i64,
        /// Byte offset of `delta` in the reply's text.
        offset: u64,
        delta: &'a str,
    },
    #[serde(rename = "message.deleted")]
    MessageDeleted {
        channel_id: &'a str,
        seq: u64,
        message_id: i64,
    },
    #[serde(rename = "ack")]
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
        channel_id: &'a str,
        seq: u64,
        message_id: i64,
        duplicate: bool,
        message: MessageDto<'a>,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    #[serde(rename = "resumed")]
    Resumed { channels: BTreeMap<&'a str, u64> },
    #[serde(rename = "typing")]
    Typing {
        channel_id: &'a str,
        user_id: &'a str,
        active: bool,
    },
    #[serde(rename = "read")]
    Read {
        channel_id: &'a str,
        user_id: &'a str,
        seq: u64,
    },
    #[serde(rename = "presence")]
    Presence {
        user_id: &'a str,
        online: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen_at: Option<Millis>,
    },
    #[serde(rename = "channel.created")]
    ChannelCreated { channel: ChannelDto<'a> },
    #[serde(rename = "channel.updated")]
    ChannelUpdated { channel: ChannelDto<'a> },
    #[serde(rename = "channel.deleted")]
    ChannelDeleted { channel_id: &'a str },
    #[serde(rename = "channel.members_joined")]
    MembersJoined {
        channel: ChannelDto<'a>,
        #[serde(serialize_with = "ser_ids")]
        user_ids: &'a [UserId],
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<&'a str>,
    },
    #[serde(rename = "channel.member_left")]
    MemberLeft {
        channel: ChannelDto<'a>,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<&'a str>,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
    },
}

fn ser_ids<S: serde::Serializer>(ids: &&[UserId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|u| u.as_str()))
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no failing Serialize impls.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
    }
}

/// Stable, machine-readable error codes shared by the REST problem JSON and WebSocket error frames.
pub fn error_code(e: &DomainError) -> &'static str {
    match e {
        DomainError::Invalid { .. } => "invalid_argument",
        DomainError::NotFound { entity, .. } => match *entity {
            "user" => "user_not_found",
            "channel" => "channel_not_found",
            "message" => "message_not_found",
            "file" => "file_not_found",
            _ => "not_found",
        },
        DomainError::AlreadyExists { .. } => "already_exists",
        DomainError::Conflict(_) => "conflict",
        DomainError::Forbidden(_) => "forbidden",
        DomainError::Rejected { .. } => "rejected",
        DomainError::NotMember { .. } => "not_a_member",
        DomainError::LimitExceeded { .. } => "limit_exceeded",
        DomainError::RateLimited { .. } => "rate_limited",
        DomainError::Unauthenticated => "unauthenticated",
        DomainError::Unavailable(_) => "unavailable",
        DomainError::Internal(_) => "internal",
    }
}

/// The message shown to clients: internal details stay in the log.
pub fn error_message(e: &DomainError) -> String {
    match e {
        DomainError::Internal(_) => "internal error".to_string(),
        DomainError::Unavailable(_) => "service temporarily unavailable; retry".to_string(),
        other => other.to_string(),
    }
}

pub fn seq(s: ChannelSeq) -> u64 {
    s.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"send","req_id":"1","channel_id":"g","text":"hi","client_msg_id":"k"}"#)
                .unwrap();
        match f {
            ClientFrame::Send {
                req_id,
                channel_id,
                body,
            } => {
                assert_eq!(req_id.as_deref(), Some("1"));
                assert_eq!(channel_id.as_str(), "g");
                assert_eq!(body.text, "hi");
                assert_eq!(body.client_msg_id.as_deref(), Some("k"));
            }
            other => panic!("{other:?}"),
        }
        let h: ClientFrame = serde_json::from_str(r#"{"type":"hello","resume":{"g":5}}"#).unwrap();
        assert!(matches!(h, ClientFrame::Hello { resume } if resume.len() == 1));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"read","channel_id":"a b","seq":1}"#).is_err());
    }

    #[test]
    fn message_frames_lead_with_type_channel_and_seq() {
        let m = Message {
            id: MessageId(7),
            channel_id: ChannelId::parse("g").unwrap(),
            seq: ChannelSeq(3),
            sender_id: Some(UserId::parse("a").unwrap()),
            kind: MessageKind::Text,
            text: "hi".into(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: vec![],
            client_msg_id: None,
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: 1,
            updated_at: 1,
            edited: false,
            deleted: false,
            reply: None,
        };
        let json = ServerFrame::MessageNew {
            channel_id: m.channel_id.as_str(),
            seq: m.seq.0,
            message: MessageDto::from(&m),
        }
        .to_json();
        assert!(
            json.starts_with(r#"{"type":"message.new","channel_id":"g","seq":3,"#),
            "{json}"
        );
    }
}
