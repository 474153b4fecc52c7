//! Sendbird's message and group-channel objects, built from domain entities. Shared by every handler that
//! answers with a message or a channel (channels, messages, bots), so they all look alike to clients.
//!
//! Rules from the official SDKs: strings are never `null` (`""` instead), times are integer milliseconds,
//! enum values stay within the SDK's lists (`state` ∈ `""|invited|joined`, `role` ∈ `""|none|operator`).

use std::collections::HashMap;

use confab_domain::model::{Channel, Member, Message, MessageKind, User};
use confab_domain::{Millis, UserId};
use confab_service::{Actor, Confab, UserView};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::SendbirdResult;

/// Sendbird's `channel_type` of a group channel's message.
const GROUP: &str = "group";

/// Where an uploaded file is served (the native download route; members fetch it with their session token,
/// as a header or `?token=`).
pub fn file_url(id: &confab_domain::FileId) -> String {
    format!("/api/v1/files/{id}")
}

/// A `data` field as Sendbird's string. Confab stores what the Sendbird surface receives as a JSON string,
/// so it round-trips byte for byte; data written as JSON by other surfaces is shown as its JSON text.
pub fn data_string(data: Option<&Value>) -> String {
    match data {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The users messages and channels refer to, loaded once per response. Users deleted since are absent and
/// shown by id alone.
#[derive(Default)]
pub struct Users(HashMap<UserId, UserView>);

impl Users {
    pub async fn load(service: &Confab, ids: impl IntoIterator<Item = UserId>) -> SendbirdResult<Users> {
        let mut map = HashMap::new();
        for id in ids {
            if map.contains_key(&id) {
                continue;
            }
            match service.get_user(&Actor::Admin, &id).await {
                Ok(v) => {
                    map.insert(id, v);
                }
                Err(confab_domain::DomainError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Users(map))
    }

    /// The senders and mentioned users of these messages.
    pub async fn of_messages<'a>(
        service: &Confab,
        messages: impl IntoIterator<Item = &'a Message>,
    ) -> SendbirdResult<Users> {
        let ids: Vec<UserId> = messages
            .into_iter()
            .flat_map(|m| m.sender_id.iter().chain(m.mentions.iter()).cloned())
            .collect();
        Users::load(service, ids).await
    }

    pub fn get(&self, id: &UserId) -> Option<&UserView> {
        self.0.get(id)
    }

    pub fn insert(&mut self, view: UserView) {
        self.0.insert(view.user.id.clone(), view);
    }
}

/// The user of a message or a mention (Sendbird's "basic user").
#[derive(Serialize)]
pub struct BasicUser {
    pub user_id: String,
    pub nickname: String,
    pub profile_url: String,
    pub metadata: Map<String, Value>,
    /// Sendbird's role in the channel; Confab has no operators.
    pub role: &'static str,
    pub is_active: bool,
    pub require_auth_for_profile_image: bool,
}

impl BasicUser {
    pub fn new(id: &UserId, users: &Users) -> Self {
        let user = users.get(id).map(|v| &v.user);
        BasicUser {
            user_id: id.to_string(),
            nickname: user.map(|u| u.nickname.clone()).unwrap_or_default(),
            profile_url: user.map(|u| u.profile_url.clone()).unwrap_or_default(),
            metadata: user.map(|u| u.metadata.clone()).unwrap_or_default(),
            role: "",
            is_active: true,
            require_auth_for_profile_image: false,
        }
    }
}

#[derive(Serialize)]
pub struct FileInfo {
    pub url: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub content_type: String,
    pub require_auth: bool,
}

/// A message as Sendbird shows it (`SendbirdMessageResponse`).
#[derive(Serialize)]
pub struct MessageObject {
    pub message_id: i64,
    /// `MESG`, `FILE` or `ADMM`.
    #[serde(rename = "type")]
    pub message_type: &'static str,
    pub message: String,
    pub custom_type: String,
    pub data: String,
    pub created_at: Millis,
    /// 0 until the message changes.
    pub updated_at: Millis,
    pub channel_url: String,
    pub channel_type: &'static str,
    /// Absent for admin messages, which have no sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<BasicUser>,
    /// Confab stores mentioned users only, so always `users`.
    pub mention_type: &'static str,
    pub mentioned_users: Vec<BasicUser>,
    pub is_removed: bool,
    pub is_op_msg: bool,
    pub silent: bool,
    /// The client's deduplication id of the send, `""` if none.
    pub req_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_message_id: Option<i64>,
    /// Replies in the thread this message starts.
    pub reply_count: u32,
}

/// Sendbird's message type of a domain message kind. Custom messages are user messages with their custom
/// type; images are files.
pub fn message_type(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text | MessageKind::Custom => "MESG",
        MessageKind::Image | MessageKind::File => "FILE",
        MessageKind::Admin => "ADMM",
    }
}

/// The file of a file message: an upload, or a file hosted elsewhere named by its payload.
pub fn file_info(m: &Message) -> Option<FileInfo> {
    if let Some(f) = &m.file {
        return Some(FileInfo {
            url: file_url(&f.id),
            name: f.name.clone(),
            size: f.size,
            content_type: f.content_type.clone(),
            require_auth: true,
        });
    }
    let p = m.payload.as_ref()?;
    let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    Some(FileInfo {
        url: text("url"),
        name: text("name"),
        size: p.get("size").and_then(Value::as_u64).unwrap_or(0),
        content_type: text("type"),
        require_auth: false,
    })
}

/// A message's `data` as clients read it. A bot's reply carries what Sendbird's AI widget looks for:
/// `stream: true` while it is being generated, `respond_mesg_id` (the message it answers), plus Confab's
/// `reply_state` and, on failure, `reason`; any JSON object the message's own data holds is kept beside them.
pub fn message_data(m: &Message) -> String {
    let Some(reply) = &m.reply else {
        // Custom messages of other surfaces keep their content in `payload`; show it rather than lose it.
        return match (&m.data, &m.payload, m.kind) {
            (None, Some(p), MessageKind::Custom) => p.to_string(),
            (d, _, _) => data_string(d.as_ref()),
        };
    };
    let mut obj = match &m.data {
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    obj.insert("stream".into(), Value::Bool(!reply.state.is_final()));
    if let Some(trigger) = reply.trigger_id {
        obj.insert("respond_mesg_id".into(), Value::from(trigger.0));
    }
    obj.insert("reply_state".into(), Value::from(reply.state.as_str()));
    if let Some(reason) = &reply.reason {
        obj.insert("reason".into(), Value::from(reason.as_str()));
    }
    Value::Object(obj).to_string()
}

/// Renders one message. `users` should hold its sender and mentioned users ([`Users::of_messages`]).
pub fn render_message(m: &Message, users: &Users) -> MessageObject {
    let is_file = matches!(m.kind, MessageKind::Image | MessageKind::File);
    MessageObject {
        message_id: m.id.0,
        message_type: message_type(m.kind),
        message: m.text.clone(),
        custom_type: m.custom_type.clone(),
        data: message_data(m),
        created_at: m.created_at,
        updated_at: if m.updated_at != m.created_at { m.updated_at } else { 0 },
        channel_url: m.channel_id.to_string(),
        channel_type: GROUP,
        user: m.sender_id.as_ref().map(|s| BasicUser::new(s, users)),
        mention_type: "users",
        mentioned_users: m.mentions.iter().map(|u| BasicUser::new(u, users)).collect(),
        is_removed: m.deleted,
        is_op_msg: false,
        silent: false,
        req_id: m.client_msg_id.clone().unwrap_or_default(),
        file: if is_file { file_info(m) } else { None },
        parent_message_id: m.parent_id.map(|p| p.0),
        reply_count: m.reply_count,
    }
}

/// Renders messages, loading the users they refer to.
pub async fn render_messages(service: &Confab, messages: &[Message]) -> SendbirdResult<Vec<MessageObject>> {
    let users = Users::of_messages(service, messages).await?;
    Ok(messages.iter().map(|m| render_message(m, &users)).collect())
}

/// A channel member as Sendbird lists it.
#[derive(Serialize)]
pub struct MemberObject {
    pub user_id: String,
    pub nickname: String,
    pub profile_url: String,
    pub metadata: Map<String, Value>,
    /// Confab has no invitations: every member has joined.
    pub state: &'static str,
    pub role: &'static str,
    pub is_active: bool,
    pub is_online: bool,
    pub last_seen_at: Millis,
    pub is_muted: bool,
    pub require_auth_for_profile_image: bool,
}

impl MemberObject {
    pub fn new(view: &UserView) -> Self {
        let u: &User = &view.user;
        MemberObject {
            user_id: u.id.to_string(),
            nickname: u.nickname.clone(),
            profile_url: u.profile_url.clone(),
            metadata: u.metadata.clone(),
            state: "joined",
            role: "none",
            is_active: true,
            is_online: view.online,
            last_seen_at: u.last_seen_at.unwrap_or(0),
            is_muted: false,
            require_auth_for_profile_image: false,
        }
    }
}

/// Members shown inside a channel object: the first page only (Sendbird shows large groups' members through
/// `GET …/members`).
pub const EMBEDDED_MEMBERS: u32 = 100;

/// A group channel as Sendbird shows it (`SendbirdGroupChannelDetail`).
#[derive(Serialize)]
pub struct ChannelObject {
    pub channel_url: String,
    pub name: String,
    pub cover_url: String,
    pub custom_type: String,
    pub data: String,
    pub is_distinct: bool,
    pub is_public: bool,
    pub is_super: bool,
    pub is_ephemeral: bool,
    pub is_broadcast: bool,
    pub is_discoverable: bool,
    pub is_access_code_required: bool,
    pub freeze: bool,
    pub member_count: u32,
    /// Everyone who is a member has joined (no invitations).
    pub joined_member_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberObject>>,
    pub operators: [(); 0],
    pub max_length_message: usize,
    pub created_at: Millis,
    /// Absent for channels the application created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<BasicUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageObject>,
    /// As the application sees it: it has read everything.
    pub unread_message_count: u64,
    pub unread_mention_count: u64,
}

/// Renders a channel, reading what the object shows beyond the row: its newest message, its creator and,
/// with `show_members`, its first members.
pub async fn render_channel(service: &Confab, channel: Channel, show_members: bool) -> SendbirdResult<ChannelObject> {
    let actor = Actor::Admin;
    let members = if show_members {
        let list = service
            .list_members(&actor, &channel.id, None, EMBEDDED_MEMBERS)
            .await?;
        Some(
            list.iter()
                .map(|(_, v): &(Member, UserView)| MemberObject::new(v))
                .collect(),
        )
    } else {
        None
    };
    let last = if channel.last_seq.0 > 0 {
        let q = confab_domain::model::HistoryQuery {
            channel_id: channel.id.clone(),
            range: confab_domain::model::HistoryRange::Latest,
            limit: 1,
        };
        // The newest message still shown, not a deleted one's tombstone.
        let live = confab_domain::model::MessageFilter {
            exclude_deleted: true,
            ..Default::default()
        };
        service.history_matching(&actor, q, live).await?.pop()
    } else {
        None
    };
    let mut users = match &last {
        Some(m) => Users::of_messages(service, [m]).await?,
        None => Users::default(),
    };
    if let Some(creator) = &channel.created_by
        && users.get(creator).is_none()
        && let Ok(v) = service.get_user(&actor, creator).await
    {
        users.insert(v);
    }
    Ok(ChannelObject {
        channel_url: channel.id.to_string(),
        is_distinct: channel.distinct || channel.kind == confab_domain::model::ChannelKind::Direct,
        name: channel.name,
        cover_url: channel.cover_url,
        custom_type: channel.custom_type,
        data: data_string(channel.data.as_ref()),
        is_public: false,
        is_super: false,
        is_ephemeral: false,
        is_broadcast: false,
        is_discoverable: false,
        is_access_code_required: false,
        freeze: false,
        member_count: channel.member_count,
        joined_member_count: channel.member_count,
        members,
        operators: [],
        max_length_message: service.limits().max_text_chars,
        created_at: channel.created_at,
        created_by: channel.created_by.as_ref().map(|c| BasicUser::new(c, &users)),
        last_message: last.as_ref().map(|m| render_message(m, &users)),
        unread_message_count: 0,
        unread_mention_count: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::bot::{ReplyInfo, ReplyState};
    use confab_domain::{ChannelId, ChannelSeq, MessageId};
    use serde_json::json;

    fn message(kind: MessageKind) -> Message {
        Message {
            id: MessageId(7),
            channel_id: ChannelId::parse("room_1").unwrap(),
            seq: ChannelSeq(1),
            sender_id: Some(UserId::parse("alice").unwrap()),
            kind,
            text: "hi".into(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: vec![UserId::parse("bob").unwrap()],
            client_msg_id: None,
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_000,
            edited: false,
            deleted: false,
            reply: None,
        }
    }

    #[test]
    fn messages_carry_no_nulls_and_sendbird_types() {
        let v = serde_json::to_value(render_message(&message(MessageKind::Text), &Users::default())).unwrap();
        assert_eq!(v["type"], "MESG");
        assert_eq!(v["message_id"], 7);
        assert_eq!(v["data"], "");
        assert_eq!(v["custom_type"], "");
        assert_eq!(v["updated_at"], 0);
        assert_eq!(v["channel_type"], "group");
        assert_eq!(v["user"]["user_id"], "alice");
        assert_eq!(v["user"]["profile_url"], "");
        assert_eq!(v["mentioned_users"][0]["user_id"], "bob");
        assert!(v.get("file").is_none() && v.get("parent_message_id").is_none());
        fn no_nulls(v: &Value) -> bool {
            match v {
                Value::Null => false,
                Value::Object(o) => o.values().all(no_nulls),
                Value::Array(a) => a.iter().all(no_nulls),
                _ => true,
            }
        }
        assert!(no_nulls(&v), "{v}");

        let mut admin = message(MessageKind::Admin);
        admin.sender_id = None;
        let v = serde_json::to_value(render_message(&admin, &Users::default())).unwrap();
        assert_eq!(v["type"], "ADMM");
        assert!(v.get("user").is_none());
        let v = serde_json::to_value(render_message(&message(MessageKind::Custom), &Users::default())).unwrap();
        assert_eq!(v["type"], "MESG");
    }

    #[test]
    fn data_round_trips_as_the_same_string() {
        let mut m = message(MessageKind::Text);
        m.data = Some(Value::String("{\"a\": 1,  \"b\":[2]}".into()));
        assert_eq!(message_data(&m), "{\"a\": 1,  \"b\":[2]}");
        m.data = Some(json!({"a": 1}));
        assert_eq!(message_data(&m), "{\"a\":1}");
    }

    #[test]
    fn bot_replies_say_whether_they_stream() {
        let mut m = message(MessageKind::Text);
        m.data = Some(Value::String("{\"keep\":\"me\"}".into()));
        m.reply = Some(ReplyInfo {
            state: ReplyState::Generating,
            trigger_id: Some(MessageId(5)),
            reason: None,
        });
        let d: Value = serde_json::from_str(&message_data(&m)).unwrap();
        assert_eq!(
            d,
            json!({"keep": "me", "stream": true, "respond_mesg_id": 5, "reply_state": "generating"})
        );
        m.reply = Some(ReplyInfo {
            state: ReplyState::Failed,
            trigger_id: Some(MessageId(5)),
            reason: Some("budget".into()),
        });
        let d: Value = serde_json::from_str(&message_data(&m)).unwrap();
        assert_eq!(d["stream"], false);
        assert_eq!(d["reply_state"], "failed");
        assert_eq!(d["reason"], "budget");
    }

    #[test]
    fn files_come_from_uploads_or_payload_urls() {
        let mut m = message(MessageKind::File);
        m.payload = Some(json!({"url": "https://x/a.pdf", "name": "a.pdf", "size": 12, "type": "application/pdf"}));
        let v = serde_json::to_value(render_message(&m, &Users::default())).unwrap();
        assert_eq!(v["type"], "FILE");
        assert_eq!(
            v["file"],
            json!({"url": "https://x/a.pdf", "name": "a.pdf", "size": 12, "type": "application/pdf",
                   "require_auth": false})
        );
    }
}
