//! Webhooks from a durable outbox. The store records an application event in the same transaction as the
//! change that caused it ([`EventRecorder`], installed as the store's `ChangeRecorder`); the [`Relay`] reads
//! the outbox in commit order and delivers each event to every endpoint that subscribes to its type:
//! at least once, in order per channel (one event of a channel in flight per endpoint at a time; channels do
//! not wait for each other), signed with the Standard Webhooks headers, retried with exponential backoff for
//! a configured period and then dead-lettered, where the admin API can see and redeliver it.
//!
//! Durable state per endpoint: its settings and a cursor (every event at or below it is delivered or
//! dead-lettered). Events above the cursor are delivered again after a crash, with the same `webhook-id`,
//! so receivers deduplicate on it.

mod endpoint;
mod lease;
mod presend;
mod recorder;
mod relay;
pub mod signature;
pub mod standard;

pub use endpoint::{BOT_TRIGGERED, EVENT_TYPES, EventFilter};
pub use presend::{PreSendConfig, PreSendHook};
pub use recorder::EventRecorder;
pub use relay::{Relay, RelayConfig};

/// The innermost cause of a request error (reqwest's own message hides an egress refusal behind "error
/// sending request" and names the URL, which may carry a secret).
pub(crate) fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: Option<&dyn std::error::Error> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    match innermost {
        Some(s) => s.to_string(),
        None if e.is_connect() => "connection failed".into(),
        None => "request failed".into(),
    }
}
