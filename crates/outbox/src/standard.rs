//! The native format: `{"type", "timestamp" (ms), "data"}` as the Standard Webhooks spec suggests, with the
//! data in the native API's shapes.

use bytes::Bytes;
use confab_domain::outbox::{RecordedChange, RecordedEvent};
use confab_wire::{ChannelDto, MessageDto, UserDto};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Serialize)]
struct Envelope<'a> {
    r#type: &'a str,
    timestamp: i64,
    data: Value,
}

/// The body of a native delivery.
pub fn render(event: &RecordedEvent) -> Bytes {
    let envelope = Envelope {
        r#type: &event.event_type,
        timestamp: event.timestamp,
        data: data_of(&event.change),
    };
    Bytes::from(serde_json::to_vec(&envelope).expect("JSON values serialize"))
}

/// The body of a native delivery from a stored payload: a recorded event, or a body rendered when it was
/// recorded (rows written before events were kept as snapshots) sent as it is.
pub fn render_stored(payload: &[u8]) -> Bytes {
    match serde_json::from_slice::<RecordedEvent>(payload) {
        Ok(event) => render(&event),
        Err(_) => Bytes::copy_from_slice(payload),
    }
}

fn data_of(change: &RecordedChange) -> Value {
    match change {
        RecordedChange::Message { message } => json!({ "message": MessageDto::from(message.as_ref()) }),
        RecordedChange::MessageDeleted {
            channel_id,
            message_id,
            seq,
        } => json!({ "channel_id": channel_id, "message_id": message_id.0, "seq": seq.0 }),
        RecordedChange::ChannelCreated { channel, members } => {
            json!({ "channel": ChannelDto::new(channel), "members": members })
        }
        RecordedChange::ChannelUpdated { channel } => json!({ "channel": ChannelDto::new(channel) }),
        RecordedChange::ChannelDeleted { channel_id, members } => {
            json!({ "channel_id": channel_id, "members": members })
        }
        RecordedChange::MembersJoined { channel, user_ids, by } => {
            json!({ "channel": ChannelDto::new(channel), "user_ids": user_ids, "by": by })
        }
        RecordedChange::MemberLeft { channel, user_id, by } => {
            json!({ "channel": ChannelDto::new(channel), "user_id": user_id, "by": by })
        }
        RecordedChange::User { user } => json!({ "user": UserDto::new(user, false) }),
        RecordedChange::UserDeleted { user_id } => json!({ "user_id": user_id }),
        RecordedChange::BotTriggered { bot, message } => {
            json!({ "bot_id": bot, "message": MessageDto::from(message.as_ref()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confab_domain::model::User;
    use confab_domain::{ChannelId, ChannelSeq, MessageId, UserId};

    use super::*;

    #[test]
    fn renders_the_envelope_and_passes_old_bodies_through() {
        let event = RecordedEvent {
            event_type: "message.deleted".into(),
            timestamp: 1_700_000_000_000,
            change: RecordedChange::MessageDeleted {
                channel_id: ChannelId::parse("c1").unwrap(),
                message_id: MessageId(9),
                seq: ChannelSeq(4),
            },
        };
        let stored = serde_json::to_vec(&event).unwrap();
        let body: Value = serde_json::from_slice(&render_stored(&stored)).unwrap();
        assert_eq!(
            body,
            json!({"type": "message.deleted", "timestamp": 1_700_000_000_000i64,
                "data": {"channel_id": "c1", "message_id": 9, "seq": 4}})
        );
        let old = br#"{"type":"user.deleted","timestamp":1,"data":{"user_id":"u"}}"#;
        assert_eq!(&render_stored(old)[..], &old[..]);

        let user = RecordedEvent {
            event_type: "user.created".into(),
            timestamp: 2,
            change: RecordedChange::User {
                user: Arc::new(User {
                    id: UserId::parse("u1").unwrap(),
                    nickname: "U".into(),
                    profile_url: String::new(),
                    metadata: Default::default(),
                    is_bot: false,
                    last_seen_at: None,
                    created_at: 2,
                    updated_at: 2,
                    disabled: false,
                }),
            },
        };
        let body: Value = serde_json::from_slice(&render(&user)).unwrap();
        assert_eq!(body["data"]["user"]["nickname"], "U");
    }
}
