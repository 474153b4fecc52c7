//! A message as clients see it (with its bot reply's state) and the content of a message to send.

use confab_domain::model::{Message, MessageKind, NewMessage};
use confab_domain::{ChannelId, DomainError, FileId, MessageId, Millis, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::files::FileDto;

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
    pub fn into_new_message(self, channel_id: ChannelId) -> Result<NewMessage, DomainError> {
        let kind = match self.kind.as_deref() {
            None => MessageKind::Text,
            Some(k) => MessageKind::parse(k)
                .ok_or_else(|| DomainError::invalid("type", "must be one of text, image, file, custom, admin"))?,
        };
        Ok(NewMessage {
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
