//! Endpoints as stored (settings namespace `webhooks.endpoint`, one JSON document each) and their event
//! filters.

use confab_domain::{DomainError, DomainResult, Millis};
use confab_service::webhooks::STANDARD_FORMAT;
use serde::{Deserialize, Serialize};

/// Every event type the outbox records.
pub const EVENT_TYPES: &[&str] = &[
    "message.sent",
    "message.edited",
    "message.deleted",
    "bot_reply.completed",
    "bot_reply.failed",
    "bot_reply.stopped",
    "bot_reply.interrupted",
    "channel.created",
    "channel.updated",
    "channel.deleted",
    "member.joined",
    "member.left",
    "user.created",
    "user.updated",
    "user.deleted",
    BOT_TRIGGERED,
];

/// A message triggered a bot that the application answers (one with a callback URL). Opt-in: an endpoint
/// takes it only when it names it (`bot.triggered` or `bot.*`), not with every event (`*` or no filter), so
/// endpoints made before it existed do not start receiving it.
pub const BOT_TRIGGERED: &str = "bot.triggered";

/// Types an endpoint takes only when its filter names them.
const OPT_IN: &[&str] = &[BOT_TRIGGERED];

/// Which event types an endpoint takes: exact types and `prefix.*` patterns; empty (or `*`) means all but the
/// opt-in types ([`BOT_TRIGGERED`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    /// Checks every entry names a known type or a pattern that matches at least one.
    pub fn parse(entries: Vec<String>) -> DomainResult<Self> {
        for e in &entries {
            if e != "*" && !EVENT_TYPES.iter().any(|t| pattern_matches(e, t)) {
                return Err(DomainError::invalid(
                    "events",
                    format!("unknown event type {e:?} (known: {})", EVENT_TYPES.join(", ")),
                ));
            }
        }
        Ok(EventFilter(entries))
    }

    pub fn matches(&self, event_type: &str) -> bool {
        let every = !OPT_IN.contains(&event_type);
        (self.0.is_empty() && every)
            || self
                .0
                .iter()
                .any(|p| (p == "*" && every) || pattern_matches(p, event_type))
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }
}

fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event_type,
    }
}

/// An endpoint as stored. The secret is kept because every delivery is signed with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub events: EventFilter,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    /// `standard`, or the compatibility surface that manages the endpoint and renders its bodies.
    #[serde(default = "standard_format")]
    pub format: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Events at or below it were recorded while the endpoint was disabled: never delivered to it, by
    /// whichever node relays it.
    #[serde(default)]
    pub skip_through: u64,
}

fn standard_format() -> String {
    STANDARD_FORMAT.to_string()
}

impl Endpoint {
    /// Kept by a compatibility surface's settings rather than through the admin API.
    pub fn is_managed(&self) -> bool {
        self.format != STANDARD_FORMAT
    }
}

pub const ENDPOINT_NAMESPACE: &str = "webhooks.endpoint";
pub const CURSOR_NAMESPACE: &str = "webhooks.cursor";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_types_and_prefix_patterns() {
        let f = EventFilter::parse(vec!["message.*".into(), "member.joined".into()]).unwrap();
        assert!(f.matches("message.sent") && f.matches("message.deleted"));
        assert!(f.matches("member.joined"));
        assert!(!f.matches("member.left") && !f.matches("bot_reply.failed"));
        assert!(EventFilter::parse(vec![]).unwrap().matches("user.created"));
        assert!(EventFilter::parse(vec!["*".into()]).unwrap().matches("user.created"));
        assert!(EventFilter::parse(vec!["messages.*".into()]).is_err());
        assert!(EventFilter::parse(vec!["message.sen".into()]).is_err());
        assert!(!pattern_matches("message.*", "messagex.sent"));
        // Bot triggers only for endpoints that ask for them.
        assert!(!EventFilter::parse(vec![]).unwrap().matches(BOT_TRIGGERED));
        assert!(!EventFilter::parse(vec!["*".into()]).unwrap().matches(BOT_TRIGGERED));
        assert!(
            !EventFilter::parse(vec!["bot_reply.*".into()])
                .unwrap()
                .matches(BOT_TRIGGERED)
        );
        assert!(
            EventFilter::parse(vec!["bot.triggered".into()])
                .unwrap()
                .matches(BOT_TRIGGERED)
        );
        assert!(EventFilter::parse(vec!["bot.*".into()]).unwrap().matches(BOT_TRIGGERED));
        assert!(
            !EventFilter::parse(vec!["bot.*".into()])
                .unwrap()
                .matches("bot_reply.failed")
        );
    }
}
