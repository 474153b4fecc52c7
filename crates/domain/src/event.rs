//! Events: what changed, in commit order. The store emits them after each commit; the gateway fans them
//! out to WebSocket sessions; later, webhooks and other nodes consume the same stream.

use std::sync::Arc;

use crate::ids::{ChannelId, ChannelSeq, MessageId, Millis, UserId};
use crate::model::{Channel, Message, User};

#[derive(Clone, Debug)]
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
            | Event::ReplyStopRequested { channel_id, .. } => Some(channel_id),
            Event::ChannelCreated { channel, .. }
            | Event::MembersJoined { channel, .. }
            | Event::MemberLeft { channel, .. } => Some(&channel.id),
            Event::ChannelUpdated(c) => Some(&c.id),
            Event::Presence { .. }
            | Event::UserCreated(_)
            | Event::UserUpdated(_)
            | Event::UserDeleted(_)
            | Event::SessionsRevoked(_)
            | Event::BotChanged(_) => None,
        }
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
