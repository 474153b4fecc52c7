//! Events: what changed, in commit order. The store emits them after each commit; the gateway fans them
//! out to WebSocket sessions; the outbox and the bot runtime consume the same stream, and a broker-backed bus
//! carries them to the other nodes (serialized with serde: every variant round-trips).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, ChannelSeq, MessageId, Millis, UserId};
use crate::model::{Channel, Message, User};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    MessageCreated(Arc<Message>),
    /// Edited, or its reply count changed.
    MessageUpdated(Arc<Message>),
    MessageDeleted {
        channel_id: ChannelId,
        message_id: MessageId,
        seq: ChannelSeq,
    },
    ChannelCreated {
        channel: Arc<Channel>,
        members: Arc<[UserId]>,
    },
    ChannelUpdated(Arc<Channel>),
    /// Carries the members it had, since they can no longer be looked up.
    ChannelDeleted {
        channel_id: ChannelId,
        members: Arc<[UserId]>,
    },
    MembersJoined {
        channel: Arc<Channel>,
        user_ids: Arc<[UserId]>,
        by: Option<UserId>,
    },
    MemberLeft {
        channel: Arc<Channel>,
        user_id: UserId,
        /// Who removed the member; `None` when the member left.
        by: Option<UserId>,
    },
    ReadUpTo {
        channel_id: ChannelId,
        user_id: UserId,
        seq: ChannelSeq,
    },
    /// Ephemeral: never stored.
    Typing {
        channel_id: ChannelId,
        user_id: UserId,
        active: bool,
    },
    Presence {
        user_id: UserId,
        online: bool,
        last_seen_at: Option<Millis>,
    },
    UserCreated(Arc<User>),
    UserUpdated(Arc<User>),
    UserDeleted(UserId),
    /// Ephemeral: generated text of a bot reply, relayed as it streams. `offset` is where `delta` starts in the
    /// reply's text, in UTF-8 bytes, so a client that missed deltas can fetch the message and continue.
    ReplyDelta {
        channel_id: ChannelId,
        message_id: MessageId,
        seq: ChannelSeq,
        offset: u64,
        delta: Arc<str>,
    },
    /// A bot was created or its settings changed.
    BotChanged(UserId),
    /// A committed message triggered a bot that has a callback URL: the application is told. Announced
    /// through the store (`Store::announce`), so the outbox records it (`bot.triggered`) and the webhook relay
    /// delivers it in the format of the surface that owns callbacks. Not sent to clients.
    BotTriggered {
        bot: UserId,
        message: Arc<Message>,
    },
    /// A member asked to stop a generating reply; the node generating it stops.
    ReplyStopRequested {
        channel_id: ChannelId,
        message_id: MessageId,
        by: Option<UserId>,
    },
    /// Some or all of the user's session tokens were revoked (or the account blocked): every open connection
    /// of the user re-checks its own credential and closes if it no longer holds. Not sent to clients.
    SessionsRevoked(UserId),
    /// A setting kept by one part of the server (moderation rules, a provider added through the admin API, a
    /// webhook endpoint, a surface's webhook settings) was written or deleted under `key` of `namespace`.
    /// Published by the part that changed it, after the store committed the change; the same part on the
    /// other nodes reloads that key from the store. Not stored, not recorded in the outbox, not sent to
    /// clients, of no channel. A node that may have missed some (after [`Event::Resync`]) reloads them all.
    SettingsChanged {
        namespace: Arc<str>,
        key: Arc<str>,
    },
    /// Raised by the bus itself, never by a change: events from other nodes may have been lost (the broker
    /// connection dropped and came back, or this node fell behind and the broker client dropped messages).
    /// Every WebSocket session of the node closes with `4008` (resync), so its client resumes from the store,
    /// the source of truth. Not stored, not recorded in the outbox, not sent to clients, of no channel; not
    /// ephemeral (it is never dropped). Delivered as [`Origin::Remote`](crate::ports::Origin::Remote), since it
    /// stands for remote events: a subscriber that takes only local events never sees it.
    Resync,
    /// Raised by a bus shared between nodes, never by a change, and never sent to another node: `user_ids`,
    /// who have sessions on this node and just joined the channel (at `after`, the channel's last sequence
    /// when they joined), may have missed some of its events while this node was starting to take the
    /// channel's events from the broker. Their sessions read what follows `after` from the store. Delivered
    /// as [`Origin::Remote`](crate::ports::Origin::Remote), after the events it follows.
    ChannelCatchUp {
        channel_id: ChannelId,
        after: ChannelSeq,
        user_ids: Arc<[UserId]>,
    },
    /// This node's commits added rows to the webhook outbox, which every node shares: the relays of the
    /// other nodes look for the rows of the endpoints they hold (a node takes only the events of the channels
    /// its own sessions are in, so it cannot tell from the channels' events). Published by the relay,
    /// coalesced; not stored, not recorded in the outbox, not sent to clients, of no channel.
    OutboxAppended,
}

impl Event {
    /// The channel whose order this event belongs to, if any. Events of one channel are delivered in order.
    pub fn channel_id(&self) -> Option<&ChannelId> {
        match self {
            Event::MessageCreated(m) | Event::MessageUpdated(m) | Event::BotTriggered { message: m, .. } => {
                Some(&m.channel_id)
            }
            Event::MessageDeleted { channel_id, .. }
            | Event::ChannelDeleted { channel_id, .. }
            | Event::ReadUpTo { channel_id, .. }
            | Event::Typing { channel_id, .. }
            | Event::ReplyDelta { channel_id, .. }
            | Event::ReplyStopRequested { channel_id, .. }
            | Event::ChannelCatchUp { channel_id, .. } => Some(channel_id),
            Event::ChannelCreated { channel, .. }
            | Event::MembersJoined { channel, .. }
            | Event::MemberLeft { channel, .. } => Some(&channel.id),
            Event::ChannelUpdated(c) => Some(&c.id),
            Event::Presence { .. }
            | Event::UserCreated(_)
            | Event::UserUpdated(_)
            | Event::UserDeleted(_)
            | Event::SessionsRevoked(_)
            | Event::BotChanged(_)
            | Event::SettingsChanged { .. }
            | Event::OutboxAppended
            | Event::Resync => None,
        }
    }

    /// Changes who belongs to a channel (or whether it exists): events every node of a cluster needs, whatever
    /// channels its sessions are in, since caches of members and the choice of which channels' events a node
    /// takes follow them.
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            Event::ChannelCreated { .. }
                | Event::MembersJoined { .. }
                | Event::MemberLeft { .. }
                | Event::ChannelDeleted { .. }
        )
    }

    /// A short, stable name for logs, metrics and (later) webhook event types.
    pub fn name(&self) -> &'static str {
        match self {
            Event::MessageCreated(_) => "message.created",
            Event::MessageUpdated(_) => "message.updated",
            Event::MessageDeleted { .. } => "message.deleted",
            Event::ChannelCreated { .. } => "channel.created",
            Event::ChannelUpdated(_) => "channel.updated",
            Event::ChannelDeleted { .. } => "channel.deleted",
            Event::MembersJoined { .. } => "channel.members_joined",
            Event::MemberLeft { .. } => "channel.member_left",
            Event::ReadUpTo { .. } => "channel.read",
            Event::Typing { .. } => "channel.typing",
            Event::Presence { .. } => "user.presence",
            Event::UserCreated(_) => "user.created",
            Event::UserUpdated(_) => "user.updated",
            Event::UserDeleted(_) => "user.deleted",
            Event::ReplyDelta { .. } => "message.delta",
            Event::BotChanged(_) => "bot.changed",
            Event::BotTriggered { .. } => "bot.triggered",
            Event::ReplyStopRequested { .. } => "message.stop_requested",
            Event::SessionsRevoked(_) => "user.sessions_revoked",
            Event::SettingsChanged { .. } => "settings.changed",
            Event::Resync => "bus.resync",
            Event::ChannelCatchUp { .. } => "bus.channel_catch_up",
            Event::OutboxAppended => "outbox.appended",
        }
    }

    /// Ephemeral events are never stored and only worth delivering while fresh (typing, presence, the deltas of
    /// a streaming reply): under pressure the bus drops them rather than make the publisher wait, so a flood of
    /// them can never stall the store's writer. Every other event is delivered without loss.
    pub fn is_ephemeral(&self) -> bool {
        matches!(
            self,
            Event::Typing { .. } | Event::Presence { .. } | Event::ReplyDelta { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bot::{ReplyInfo, ReplyState};
    use crate::ids::FileId;
    use crate::model::{ChannelKind, FileObject, MessageKind};

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    /// Ids with the characters a broker's subjects care about.
    fn cid() -> ChannelId {
        ChannelId::parse("team.*>-x").unwrap()
    }

    fn message() -> Arc<Message> {
        Arc::new(Message {
            id: MessageId(42),
            channel_id: cid(),
            seq: ChannelSeq(7),
            sender_id: Some(uid("bot.1")),
            kind: MessageKind::File,
            text: "héllo \"quoted\"\n".into(),
            custom_type: "note".into(),
            data: Some(serde_json::json!({"k": [1, 2.5, "v"], "n": null})),
            payload: Some(serde_json::json!("p")),
            mentions: vec![uid("alice"), uid("bob")],
            client_msg_id: Some("c-1".into()),
            parent_id: Some(MessageId(40)),
            reply_count: 3,
            file: Some(FileObject {
                id: FileId::parse("0123456789abcdef0123456789abcdef").unwrap(),
                channel_id: cid(),
                uploader_id: Some(uid("alice")),
                name: "a.png".into(),
                size: 1234,
                content_type: "image/png".into(),
                sha256: "ab".repeat(32),
                created_at: 5,
            }),
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_001,
            edited: true,
            deleted: false,
            reply: Some(ReplyInfo {
                state: ReplyState::Generating,
                trigger_id: Some(MessageId(41)),
                reason: Some("why".into()),
            }),
        })
    }

    fn channel() -> Arc<Channel> {
        Arc::new(Channel {
            id: cid(),
            kind: ChannelKind::Group,
            name: "team".into(),
            cover_url: "https://example.com/c.png".into(),
            custom_type: String::new(),
            data: None,
            created_by: Some(uid("alice")),
            created_at: 1,
            updated_at: 2,
            last_seq: ChannelSeq(9),
            last_message_at: Some(3),
            member_count: 2,
            distinct: true,
        })
    }

    fn user() -> Arc<User> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("team".into(), "blue".into());
        Arc::new(User {
            id: uid("alice"),
            nickname: "Alice".into(),
            profile_url: String::new(),
            metadata,
            is_bot: false,
            created_at: 1,
            updated_at: 2,
            last_seen_at: None,
            disabled: true,
        })
    }

    /// One event of each variant. The match makes a new variant fail to compile here until it has a sample.
    fn one_of_each() -> Vec<Event> {
        let all = vec![
            Event::MessageCreated(message()),
            Event::MessageUpdated(message()),
            Event::MessageDeleted {
                channel_id: cid(),
                message_id: MessageId(42),
                seq: ChannelSeq(7),
            },
            Event::ChannelCreated {
                channel: channel(),
                members: Arc::from(vec![uid("alice"), uid("bob")]),
            },
            Event::ChannelUpdated(channel()),
            Event::ChannelDeleted {
                channel_id: cid(),
                members: Arc::from(Vec::<UserId>::new()),
            },
            Event::MembersJoined {
                channel: channel(),
                user_ids: Arc::from(vec![uid("carol")]),
                by: Some(uid("alice")),
            },
            Event::MemberLeft {
                channel: channel(),
                user_id: uid("bob"),
                by: None,
            },
            Event::ReadUpTo {
                channel_id: cid(),
                user_id: uid("bob"),
                seq: ChannelSeq(6),
            },
            Event::Typing {
                channel_id: cid(),
                user_id: uid("bob"),
                active: true,
            },
            Event::Presence {
                user_id: uid("bob"),
                online: false,
                last_seen_at: Some(99),
            },
            Event::UserCreated(user()),
            Event::UserUpdated(user()),
            Event::UserDeleted(uid("gone")),
            Event::ReplyDelta {
                channel_id: cid(),
                message_id: MessageId(43),
                seq: ChannelSeq(8),
                offset: 12,
                delta: Arc::from("wörld"),
            },
            Event::BotChanged(uid("bot.1")),
            Event::BotTriggered {
                bot: uid("bot.1"),
                message: message(),
            },
            Event::ReplyStopRequested {
                channel_id: cid(),
                message_id: MessageId(43),
                by: Some(uid("alice")),
            },
            Event::SessionsRevoked(uid("alice")),
            Event::SettingsChanged {
                namespace: Arc::from("moderation"),
                key: Arc::from("channel:team.*>-x"),
            },
            Event::Resync,
            Event::ChannelCatchUp {
                channel_id: cid(),
                after: ChannelSeq(3),
                user_ids: Arc::from(vec![uid("alice")]),
            },
            Event::OutboxAppended,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in &all {
            let index = match e {
                Event::MessageCreated(_) => 0,
                Event::MessageUpdated(_) => 1,
                Event::MessageDeleted { .. } => 2,
                Event::ChannelCreated { .. } => 3,
                Event::ChannelUpdated(_) => 4,
                Event::ChannelDeleted { .. } => 5,
                Event::MembersJoined { .. } => 6,
                Event::MemberLeft { .. } => 7,
                Event::ReadUpTo { .. } => 8,
                Event::Typing { .. } => 9,
                Event::Presence { .. } => 10,
                Event::UserCreated(_) => 11,
                Event::UserUpdated(_) => 12,
                Event::UserDeleted(_) => 13,
                Event::ReplyDelta { .. } => 14,
                Event::BotChanged(_) => 15,
                Event::BotTriggered { .. } => 16,
                Event::ReplyStopRequested { .. } => 17,
                Event::SessionsRevoked(_) => 18,
                Event::Resync => 19,
                Event::SettingsChanged { .. } => 20,
                Event::ChannelCatchUp { .. } => 21,
                Event::OutboxAppended => 22,
            };
            seen.insert(index);
        }
        assert_eq!(seen.len(), 23, "a sample per variant");
        all
    }

    #[test]
    fn every_variant_round_trips_through_json() {
        for event in one_of_each() {
            let json = serde_json::to_vec(&event).unwrap();
            let back: Event =
                serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{} does not decode: {e}", event.name()));
            assert_eq!(format!("{back:?}"), format!("{event:?}"), "{}", event.name());
            assert_eq!(serde_json::to_vec(&back).unwrap(), json, "{}", event.name());
        }
    }

    #[test]
    fn decoding_validates_ids() {
        let bad = r#"{"UserDeleted":"has space"}"#;
        assert!(serde_json::from_str::<Event>(bad).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"NoSuchEvent":1}"#).is_err());
    }

    #[test]
    fn resync_is_durable_and_of_no_channel() {
        assert!(!Event::Resync.is_ephemeral());
        assert!(Event::Resync.channel_id().is_none());
    }
}
