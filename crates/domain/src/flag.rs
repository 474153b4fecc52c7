//! Messages a moderation flag rule matched: stored as sent, listed for review, then approved or removed.

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, MessageId, Millis, UserId};
use crate::model::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagState {
    Pending,
    Approved,
    /// The message was deleted by the review.
    Removed,
}

impl FlagState {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagState::Pending => "pending",
            FlagState::Approved => "approved",
            FlagState::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<FlagState> {
        Some(match s {
            "pending" => FlagState::Pending,
            "approved" => FlagState::Approved,
            "removed" => FlagState::Removed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlaggedMessage {
    pub message: Message,
    /// The rules that flagged it.
    pub rules: Vec<String>,
    pub state: FlagState,
    pub flagged_at: Millis,
    pub reviewed_at: Option<Millis>,
    /// `None` for the application (master token).
    pub reviewed_by: Option<UserId>,
}

/// Which flagged messages to list, oldest first.
#[derive(Clone, Debug, Default)]
pub struct FlagQuery {
    pub state: Option<FlagState>,
    pub channel_id: Option<ChannelId>,
    pub after: Option<MessageId>,
    pub limit: u32,
}
