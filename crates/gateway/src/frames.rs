//! The WebSocket protocol's frames (`docs/protocol.md`): what a client sends and what the server sends. The
//! JSON shapes they carry (messages, channels) are the native wire format of `confab-wire`, shared with REST
//! and the webhooks.

use std::collections::BTreeMap;

use confab_domain::{ChannelId, Millis, UserId};
use confab_wire::{ChannelDto, MessageDto, SendMessageBody};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use confab_domain::model::{Message, MessageKind};
    use confab_domain::{ChannelSeq, MessageId};

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
