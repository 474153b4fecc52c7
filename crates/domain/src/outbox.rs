//! The outbox: application events recorded by the store in the same transaction as the change that caused
//! them, so a crash between the commit and a webhook delivery loses nothing. Which events are recorded, and
//! in which shape, is decided by a [`ChangeRecorder`] installed by the server (the webhook relay's); the
//! store only keeps the rows and hands them back in commit order.

use crate::event::Event;
use crate::ids::{ChannelId, Millis};

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
