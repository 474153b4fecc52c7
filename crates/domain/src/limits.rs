//! Explicit limits with secure defaults. Every surface enforces the same numbers.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Message text length in characters (NIM's body limit is 5,000 characters).
    pub max_text_chars: usize,
    /// Size of a message's `data` or `payload` once serialized, in bytes.
    pub max_data_bytes: usize,
    /// Mentioned users per message.
    pub max_mentions: usize,
    /// Members per channel.
    pub max_channel_members: u32,
    /// Sustained messages per second a user may send (client sessions and server-side sends alike).
    pub user_send_per_sec: u32,
    /// Burst of sends allowed above the sustained rate.
    pub user_send_burst: u32,
    /// Sustained read-position writes per second a user may make (REST and WebSocket alike; WebSocket
    /// sessions already merge theirs to about one per channel per second).
    pub user_reads_per_sec: u32,
    /// Burst of read-position writes allowed above the sustained rate.
    pub user_reads_burst: u32,
    /// Largest page of history or of a list.
    pub max_page: u32,
    /// Presence changes are pushed to users who share a channel of at most this many members; in larger
    /// channels clients read presence through the API (pushing it would cost members² frames).
    pub presence_max_members: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 5_000,
            max_data_bytes: 16 * 1024,
            max_mentions: 50,
            max_channel_members: 10_000,
            user_send_per_sec: 10,
            user_send_burst: 20,
            user_reads_per_sec: 20,
            user_reads_burst: 100,
            max_page: 200,
            presence_max_members: 100,
        }
    }
}
