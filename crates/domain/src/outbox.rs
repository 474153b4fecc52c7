//! The outbox: application events recorded by the store in the same transaction as the change that caused
//! them, so a crash between the commit and a webhook delivery loses nothing. Which events are recorded, and
//! in which shape, is decided by a [`ChangeRecorder`] installed by the server (the webhook relay's); the
//! store only keeps the rows and hands them back in commit order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::{ChannelId, ChannelSeq, MessageId, Millis, UserId};
use crate::model::{Channel, Message, User};

/// Which write produced an event. An `Event::MessageUpdated` means an edit, a finished bot reply or a thread's
/// reply count, and a consumer announcing changes to an application must tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeCause {
    Send,
    Edit,
    FinishReply,
    Other,
}

/// An event to record, already rendered for the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    pub event_type: &'static str,
    /// Events of one channel are delivered in their commit order.
    pub channel_id: Option<ChannelId>,
    pub payload: Vec<u8>,
}

/// A recorded event as the store returns it. `id` grows with the commit order and is never reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: u64,
    pub event_type: String,
    pub channel_id: Option<ChannelId>,
    pub payload: Vec<u8>,
    pub created_at: Millis,
}

/// Decides, inside the store's write transaction, whether an event is recorded and renders it. Called on the
/// store's writer thread for every committed event: it must be quick and must not block.
pub trait ChangeRecorder: Send + Sync {
    fn record(&self, cause: ChangeCause, event: &Event) -> Option<OutboxRecord>;
}

/// An event that one endpoint never accepted within the retry period, kept for inspection and redelivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub endpoint_id: String,
    pub event: OutboxEntry,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: Millis,
}

/// What the outbox keeps of an event: the domain objects as they were at the commit, so every webhook format
/// (the native envelope, a compatibility surface's payload) is rendered from the same record at delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The webhook event type (`message.sent`, `bot_reply.completed`...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the change was recorded (ms since the epoch).
    pub timestamp: Millis,
    pub change: RecordedChange,
}

/// The recorded part of an [`Event`]. Shares the event's objects (`Arc`s), so recording clones nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordedChange {
    /// Sent, edited, or a bot reply in its final state.
    Message {
        message: Arc<Message>,
    },
    MessageDeleted {
        channel_id: ChannelId,
        message_id: MessageId,
        seq: ChannelSeq,
    },
    ChannelCreated {
        channel: Arc<Channel>,
        members: Arc<[UserId]>,
    },
    ChannelUpdated {
        channel: Arc<Channel>,
    },
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
        by: Option<UserId>,
    },
    /// Created or updated.
    User {
        user: Arc<User>,
    },
    UserDeleted {
        user_id: UserId,
    },
    /// A message (as committed) triggered a bot that the application answers (its callback URL).
    BotTriggered {
        bot: UserId,
        message: Arc<Message>,
    },
}

impl RecordedChange {
    /// The recordable part of an event; `None` for events never announced (deltas, typing, presence...).
    pub fn of(event: &Event) -> Option<RecordedChange> {
        Some(match event {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => RecordedChange::Message { message: m.clone() },
            Event::MessageDeleted {
                channel_id,
                message_id,
                seq,
            } => RecordedChange::MessageDeleted {
                channel_id: channel_id.clone(),
                message_id: *message_id,
                seq: *seq,
            },
            Event::ChannelCreated { channel, members } => RecordedChange::ChannelCreated {
                channel: channel.clone(),
                members: members.clone(),
            },
            Event::ChannelUpdated(c) => RecordedChange::ChannelUpdated { channel: c.clone() },
            Event::ChannelDeleted { channel_id, members } => RecordedChange::ChannelDeleted {
                channel_id: channel_id.clone(),
                members: members.clone(),
            },
            Event::MembersJoined { channel, user_ids, by } => RecordedChange::MembersJoined {
                channel: channel.clone(),
                user_ids: user_ids.clone(),
                by: by.clone(),
            },
            Event::MemberLeft { channel, user_id, by } => RecordedChange::MemberLeft {
                channel: channel.clone(),
                user_id: user_id.clone(),
                by: by.clone(),
            },
            Event::UserCreated(u) | Event::UserUpdated(u) => RecordedChange::User { user: u.clone() },
            Event::UserDeleted(id) => RecordedChange::UserDeleted { user_id: id.clone() },
            Event::BotTriggered { bot, message } => RecordedChange::BotTriggered {
                bot: bot.clone(),
                message: message.clone(),
            },
            _ => return None,
        })
    }

    /// The channel whose order the event belongs to.
    pub fn channel_id(&self) -> Option<&ChannelId> {
        match self {
            RecordedChange::Message { message } | RecordedChange::BotTriggered { message, .. } => {
                Some(&message.channel_id)
            }
            RecordedChange::MessageDeleted { channel_id, .. } | RecordedChange::ChannelDeleted { channel_id, .. } => {
                Some(channel_id)
            }
            RecordedChange::ChannelCreated { channel, .. }
            | RecordedChange::ChannelUpdated { channel }
            | RecordedChange::MembersJoined { channel, .. }
            | RecordedChange::MemberLeft { channel, .. } => Some(&channel.id),
            RecordedChange::User { .. } | RecordedChange::UserDeleted { .. } => None,
        }
    }
}
