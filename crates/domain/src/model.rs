//! Domain entities and the commands that create or change them.
//! These are not wire formats: each API surface has its own DTOs and converts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::ids::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId};
use crate::limits::Limits;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub nickname: String,
    pub profile_url: String,
    /// String-valued key/value pairs owned by the application.
    pub metadata: serde_json::Map<String, Value>,
    pub is_bot: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// When the user's last WebSocket session closed; `None` if never connected.
    pub last_seen_at: Option<Millis>,
    /// A blocked account: no sessions, no sends, until unblocked (its data stays).
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: UserId,
    pub nickname: String,
    pub profile_url: String,
    pub metadata: serde_json::Map<String, Value>,
    pub is_bot: bool,
}

#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub nickname: Option<String>,
    pub profile_url: Option<String>,
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub disabled: Option<bool>,
}

impl NewUser {
    pub fn validate(&self) -> Result<(), DomainError> {
        check_nickname(&self.nickname)?;
        check_url_field("profile_url", &self.profile_url)?;
        check_metadata(&self.metadata)
    }
}

impl UserPatch {
    pub fn validate(&self) -> Result<(), DomainError> {
        if let Some(n) = &self.nickname {
            check_nickname(n)?;
        }
        if let Some(u) = &self.profile_url {
            check_url_field("profile_url", u)?;
        }
        if let Some(m) = &self.metadata {
            check_metadata(m)?;
        }
        Ok(())
    }
}

fn check_nickname(n: &str) -> Result<(), DomainError> {
    if n.chars().count() > 80 {
        return Err(DomainError::invalid("nickname", "must be at most 80 characters"));
    }
    Ok(())
}

fn check_url_field(field: &'static str, u: &str) -> Result<(), DomainError> {
    if u.len() > 2048 {
        return Err(DomainError::invalid(field, "must be at most 2048 characters"));
    }
    Ok(())
}

fn check_metadata(m: &serde_json::Map<String, Value>) -> Result<(), DomainError> {
    if m.len() > 32 {
        return Err(DomainError::invalid("metadata", "at most 32 keys"));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 {
            return Err(DomainError::invalid("metadata", "keys must be 1 to 128 characters"));
        }
        match v {
            Value::String(s) if s.len() <= 4096 => {}
            _ => {
                return Err(DomainError::invalid(
                    "metadata",
                    "values must be strings of at most 4096 characters",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A distinct 1:1 conversation: the same pair of users always has the same channel.
    Direct,
    Group,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Direct => "direct",
            ChannelKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ChannelKind::Direct),
            "group" => Some(ChannelKind::Group),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: ChannelId,
    pub kind: ChannelKind,
    pub name: String,
    pub cover_url: String,
    pub custom_type: String,
    pub data: Option<Value>,
    pub created_by: Option<UserId>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Sequence of the newest message; 0 when the channel is empty.
    pub last_seq: ChannelSeq,
    pub last_message_at: Option<Millis>,
    pub member_count: u32,
    /// Created distinct: creating another distinct channel with the member set it was created with returns
    /// this one instead (see [`NewChannel::distinct_key`]).
    pub distinct: bool,
}

#[derive(Clone, Debug)]
pub struct NewChannel {
    pub id: ChannelId,
    pub kind: ChannelKind,
    pub name: String,
    pub cover_url: String,
    pub custom_type: String,
    pub data: Option<Value>,
    pub created_by: Option<UserId>,
    pub members: Vec<UserId>,
    /// Identifies a distinct channel by its member set: while a channel created with the same key exists,
    /// creating this one returns that channel instead. The key is fixed at creation (members who join or
    /// leave later do not change it), so "the channel these users were given", not "whoever is in it now".
    pub distinct_key: Option<String>,
}

/// Every direct channel's id starts with this, and no other channel's may: otherwise anyone could create a
/// group under the id two other users' direct channel would get, and their direct messages would fail.
pub const DIRECT_ID_PREFIX: &str = "dm.";

impl NewChannel {
    /// The id of the distinct 1:1 channel of two users, independent of their order.
    pub fn direct_id(a: &UserId, b: &UserId) -> ChannelId {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        // Both ids are at most 80 characters of safe ASCII; a readable id beats a hash here, but it must fit
        // the 100-character channel id, so long pairs fall back to a stable digest.
        let readable = format!("{DIRECT_ID_PREFIX}{x}.{y}");
        if readable.len() <= ChannelId::MAX_LEN && !x.as_str().contains('.') && !y.as_str().contains('.') {
            return ChannelId::parse(&readable).expect("built from valid ids");
        }
        ChannelId::parse(&format!(
            "{DIRECT_ID_PREFIX}{:016x}{:016x}",
            fnv1a(x.as_str(), 0),
            fnv1a(y.as_str(), 1)
        ))
        .expect("hex id is valid")
    }

    pub fn validate(&self, limits: &Limits) -> Result<(), DomainError> {
        if self.kind != ChannelKind::Direct && self.id.as_str().starts_with(DIRECT_ID_PREFIX) {
            return Err(DomainError::invalid(
                "id",
                "ids starting with \"dm.\" are reserved for direct channels",
            ));
        }
        if self.name.chars().count() > 200 {
            return Err(DomainError::invalid("name", "must be at most 200 characters"));
        }
        check_url_field("cover_url", &self.cover_url)?;
        check_custom_type(&self.custom_type)?;
        check_data(&self.data, limits)?;
        if self.members.len() > limits.max_channel_members as usize {
            return Err(DomainError::LimitExceeded {
                what: "channel members",
                limit: limits.max_channel_members as u64,
            });
        }
        Ok(())
    }
}

/// 64-bit FNV-1a, seeded, for the stable digest of long direct-channel ids (not a security boundary).
fn fnv1a(s: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[derive(Clone, Debug, Default)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub cover_url: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<Option<Value>>,
}

impl ChannelPatch {
    pub fn validate(&self, limits: &Limits) -> Result<(), DomainError> {
        if let Some(n) = &self.name
            && n.chars().count() > 200
        {
            return Err(DomainError::invalid("name", "must be at most 200 characters"));
        }
        if let Some(u) = &self.cover_url {
            check_url_field("cover_url", u)?;
        }
        if let Some(c) = &self.custom_type {
            check_custom_type(c)?;
        }
        if let Some(d) = &self.data {
            check_data(d, limits)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub joined_at: Millis,
    /// The member has read every message up to and including this sequence.
    pub read_seq: ChannelSeq,
}

/// A channel as one of its members sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberChannel {
    pub channel: Channel,
    pub read_seq: ChannelSeq,
}

impl MemberChannel {
    pub fn unread_count(&self) -> u64 {
        self.channel.last_seq.0.saturating_sub(self.read_seq.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Image,
    File,
    /// Application-defined content in `payload` (opaque JSON).
    Custom,
    /// Sent by the application or the server, not by a member (Sendbird `ADMM`, NIM alert).
    Admin,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::Custom => "custom",
            MessageKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => MessageKind::Text,
            "image" => MessageKind::Image,
            "file" => MessageKind::File,
            "custom" => MessageKind::Custom,
            "admin" => MessageKind::Admin,
            _ => return None,
        })
    }
}

/// A stored upload referenced by an image or file message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: FileId,
    /// The channel the file was uploaded for: only its members may read it.
    pub channel_id: ChannelId,
    pub uploader_id: Option<UserId>,
    pub name: String,
    pub size: u64,
    /// Sniffed from the content, never taken from the client.
    pub content_type: String,
    pub sha256: String,
    pub created_at: Millis,
}

/// The storage limits an upload is recorded under. The store checks them with the insert, so concurrent
/// uploads cannot pass them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileQuota {
    /// Bytes of all files of one uploader (uploads of the application have no uploader).
    pub per_user: u64,
    /// Bytes of all files.
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub seq: ChannelSeq,
    /// `None` for admin/system messages sent by the application itself.
    pub sender_id: Option<UserId>,
    pub kind: MessageKind,
    pub text: String,
    pub custom_type: String,
    pub data: Option<Value>,
    pub payload: Option<Value>,
    pub mentions: Vec<UserId>,
    pub client_msg_id: Option<String>,
    pub parent_id: Option<MessageId>,
    pub reply_count: u32,
    pub file: Option<FileObject>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub edited: bool,
    pub deleted: bool,
    /// Set when the message is a bot's reply.
    pub reply: Option<crate::bot::ReplyInfo>,
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub channel_id: ChannelId,
    pub sender_id: Option<UserId>,
    pub kind: MessageKind,
    pub text: String,
    pub custom_type: String,
    pub data: Option<Value>,
    pub payload: Option<Value>,
    pub mentions: Vec<UserId>,
    pub client_msg_id: Option<String>,
    pub parent_id: Option<MessageId>,
    pub file_id: Option<FileId>,
    /// For a bot reply: created `generating`, finished later.
    pub reply: Option<crate::bot::ReplyInfo>,
    /// Moderation flag rules the content matched: stored with the message, listed for review.
    pub flags: Vec<String>,
}

impl NewMessage {
    pub fn text(channel_id: ChannelId, sender_id: UserId, text: impl Into<String>) -> Self {
        NewMessage {
            channel_id,
            sender_id: Some(sender_id),
            kind: MessageKind::Text,
            text: text.into(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: Vec::new(),
            client_msg_id: None,
            parent_id: None,
            file_id: None,
            reply: None,
            flags: Vec::new(),
        }
    }

    /// Checks the message against the limits and the rules of its kind.
    pub fn validate(&self, limits: &Limits) -> Result<(), DomainError> {
        check_text(&self.text, limits)?;
        check_custom_type(&self.custom_type)?;
        check_data(&self.data, limits)?;
        if let Some(p) = &self.payload {
            let len = serde_json::to_string(p).map(|s| s.len()).unwrap_or(usize::MAX);
            if len > limits.max_data_bytes {
                return Err(DomainError::LimitExceeded {
                    what: "payload",
                    limit: limits.max_data_bytes as u64,
                });
            }
        }
        if self.mentions.len() > limits.max_mentions {
            return Err(DomainError::LimitExceeded {
                what: "mentions",
                limit: limits.max_mentions as u64,
            });
        }
        if let Some(c) = &self.client_msg_id
            && (c.is_empty() || c.len() > 128)
        {
            return Err(DomainError::invalid("client_msg_id", "must be 1 to 128 characters"));
        }
        match self.kind {
            MessageKind::Text | MessageKind::Admin => {
                // A bot reply starts empty and fills as it streams.
                if self.text.trim().is_empty() && self.reply.is_none() {
                    return Err(DomainError::invalid("text", "must not be empty"));
                }
                if self.file_id.is_some() {
                    return Err(DomainError::invalid(
                        "file_id",
                        "only image and file messages carry a file",
                    ));
                }
            }
            MessageKind::Image | MessageKind::File => {
                // A file hosted elsewhere is named by `payload.url` instead of an upload.
                let external = self
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("url"))
                    .and_then(Value::as_str)
                    .is_some_and(|u| !u.trim().is_empty());
                if self.file_id.is_none() && !external {
                    return Err(DomainError::invalid(
                        "file_id",
                        "image and file messages need an uploaded file or a payload with its url",
                    ));
                }
            }
            MessageKind::Custom => {
                if self.payload.is_none() && self.data.is_none() && self.text.is_empty() {
                    return Err(DomainError::invalid("payload", "custom messages need a payload"));
                }
            }
        }
        if self.kind != MessageKind::Admin && self.sender_id.is_none() {
            return Err(DomainError::invalid(
                "sender_id",
                "only admin messages may have no sender",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
pub struct MessagePatch {
    pub text: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<Option<Value>>,
    pub payload: Option<Value>,
    /// Moderation flag rules the new content matched: recorded with the edit, in its transaction. Set by
    /// the service's review, never by a surface.
    pub flags: Vec<String>,
}

impl MessagePatch {
    pub fn validate(&self, limits: &Limits) -> Result<(), DomainError> {
        if let Some(t) = &self.text {
            check_text(t, limits)?;
            if t.trim().is_empty() {
                return Err(DomainError::invalid("text", "must not be empty"));
            }
        }
        if let Some(c) = &self.custom_type {
            check_custom_type(c)?;
        }
        if let Some(d) = &self.data {
            check_data(d, limits)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.custom_type.is_none() && self.data.is_none() && self.payload.is_none()
    }
}

fn check_text(t: &str, limits: &Limits) -> Result<(), DomainError> {
    // Counted in characters, as NIM counts its 5,000-character body limit.
    if t.len() > limits.max_text_chars && t.chars().count() > limits.max_text_chars {
        return Err(DomainError::LimitExceeded {
            what: "message text",
            limit: limits.max_text_chars as u64,
        });
    }
    Ok(())
}

fn check_custom_type(c: &str) -> Result<(), DomainError> {
    if c.len() > 128 {
        return Err(DomainError::invalid("custom_type", "must be at most 128 characters"));
    }
    Ok(())
}

fn check_data(d: &Option<Value>, limits: &Limits) -> Result<(), DomainError> {
    if let Some(v) = d {
        let len = match v {
            Value::String(s) => s.len(),
            other => serde_json::to_string(other).map(|s| s.len()).unwrap_or(usize::MAX),
        };
        if len > limits.max_data_bytes {
            return Err(DomainError::LimitExceeded {
                what: "data",
                limit: limits.max_data_bytes as u64,
            });
        }
    }
    Ok(())
}

/// Which part of a channel's history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryRange {
    /// The newest messages, up to `limit`.
    Latest,
    /// Messages with a sequence lower than this, newest first in the query, returned oldest first.
    Before(ChannelSeq),
    /// Messages with a sequence higher than this, oldest first.
    After(ChannelSeq),
}

#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub channel_id: ChannelId,
    pub range: HistoryRange,
    pub limit: u32,
}

/// Which messages of a history range to return; each `Some` list keeps only messages matching one of its
/// values, and the limit counts matching messages only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub custom_types: Option<Vec<String>>,
    pub sender_ids: Option<Vec<UserId>>,
    pub kinds: Option<Vec<MessageKind>>,
    /// Leaves out deleted messages (their tombstones keep their sequence in plain history).
    pub exclude_deleted: bool,
}

impl MessageFilter {
    pub fn is_empty(&self) -> bool {
        self.custom_types.is_none() && self.sender_ids.is_none() && self.kinds.is_none() && !self.exclude_deleted
    }
}

/// The result of appending a message: either newly stored, or the original of a retried send.
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    /// True when `(sender, client_msg_id)` matched an existing message and nothing new was stored.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn direct_ids_do_not_depend_on_order() {
        let a = NewChannel::direct_id(&uid("alice"), &uid("bob"));
        let b = NewChannel::direct_id(&uid("bob"), &uid("alice"));
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "dm.alice.bob");
        let long = "x".repeat(80);
        let c = NewChannel::direct_id(&uid(&long), &uid("bob"));
        assert!(c.as_str().len() <= ChannelId::MAX_LEN);
        assert_eq!(c, NewChannel::direct_id(&uid("bob"), &uid(&long)));
        // A dot in an id would make "dm.a.b.c" ambiguous: such pairs use the digest.
        let d1 = NewChannel::direct_id(&uid("a.b"), &uid("c"));
        let d2 = NewChannel::direct_id(&uid("a"), &uid("b.c"));
        assert_ne!(d1, d2);
    }

    #[test]
    fn only_direct_channels_take_ids_of_the_direct_space() {
        let limits = Limits::default();
        let direct = NewChannel::direct_id(&uid("alice"), &uid("bob"));
        let channel = |id: &str, kind| NewChannel {
            id: ChannelId::parse(id).unwrap(),
            kind,
            name: String::new(),
            cover_url: String::new(),
            custom_type: String::new(),
            data: None,
            created_by: None,
            members: Vec::new(),
            distinct_key: None,
        };
        let squat = channel(direct.as_str(), ChannelKind::Group).validate(&limits);
        assert!(
            matches!(squat, Err(DomainError::Invalid { field: "id", .. })),
            "{squat:?}"
        );
        assert!(channel(direct.as_str(), ChannelKind::Direct).validate(&limits).is_ok());
        assert!(channel("dm", ChannelKind::Group).validate(&limits).is_ok());
        assert!(
            channel("DM.alice.bob", ChannelKind::Group).validate(&limits).is_ok(),
            "ids are case-sensitive"
        );
    }

    #[test]
    fn text_limit_counts_characters() {
        let limits = Limits::default();
        let mut m = NewMessage::text(ChannelId::parse("c").unwrap(), uid("a"), "é".repeat(5000));
        assert!(m.validate(&limits).is_ok());
        m.text.push('x');
        assert!(matches!(m.validate(&limits), Err(DomainError::LimitExceeded { .. })));
    }

    #[test]
    fn kinds_need_their_content() {
        let limits = Limits::default();
        let mut m = NewMessage::text(ChannelId::parse("c").unwrap(), uid("a"), " ");
        assert!(m.validate(&limits).is_err());
        m.kind = MessageKind::Image;
        assert!(m.validate(&limits).is_err());
        m.file_id = Some(FileId::parse("0123456789abcdef0123456789abcdef").unwrap());
        assert!(m.validate(&limits).is_ok());
        m.kind = MessageKind::Text;
        m.text = "hi".into();
        assert!(m.validate(&limits).is_err(), "text messages carry no file");
    }

    #[test]
    fn file_messages_may_name_an_external_url() {
        let limits = Limits::default();
        let mut m = NewMessage::text(ChannelId::parse("c").unwrap(), uid("a"), "");
        m.kind = MessageKind::File;
        m.payload = Some(serde_json::json!({"url": " "}));
        assert!(m.validate(&limits).is_err(), "a blank url names nothing");
        m.payload = Some(serde_json::json!({"url": "https://example.com/a.pdf", "name": "a.pdf"}));
        assert!(m.validate(&limits).is_ok());
    }
}
