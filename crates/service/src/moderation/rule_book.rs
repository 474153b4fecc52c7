//! The rules in force (configuration file, admin API, per channel), compiled by `confab-moderation`, as the
//! service's content guard and rule admin.

use std::borrow::Cow;

use confab_domain::ChannelId;
use confab_domain::ports::DynStore;
use confab_moderation::{PolicyConfig, RuleBook, Verdict};
use serde_json::Value;

use super::{APP_RULES_KEY, ContentGuard, RULES_NAMESPACE, ReplyReview, Review, RuleAdmin};

pub struct RuleBookGuard(RuleBook);

impl RuleBookGuard {
    /// The configuration's rules alone.
    pub fn new(config: &PolicyConfig) -> Result<Self, String> {
        RuleBook::new(config.clone())
            .map(RuleBookGuard)
            .map_err(|e| format!("moderation: {e}"))
    }

    /// The configuration's rules plus those stored through the admin API. A stored rule set that no longer
    /// compiles is logged and skipped: the server still starts with the others.
    pub async fn load(config: &PolicyConfig, store: &DynStore) -> Result<Self, String> {
        let guard = RuleBookGuard::new(config)?;
        let stored = store
            .list_settings(RULES_NAMESPACE)
            .await
            .map_err(|e| format!("moderation rules: {e}"))?;
        for (key, value) in stored {
            let rules = parse_rules(value);
            let installed = match (key.as_str(), key.strip_prefix("channel:")) {
                (APP_RULES_KEY, _) => rules.and_then(|r| guard.0.set_app_rules(r).map_err(|e| e.to_string())),
                (_, Some(channel)) => {
                    rules.and_then(|r| guard.0.set_channel_rules(channel, Some(r)).map_err(|e| e.to_string()))
                }
                _ => Ok(()),
            };
            if let Err(e) = installed {
                tracing::error!(key, error = %e, "stored moderation rules do not compile; skipped");
            }
        }
        Ok(guard)
    }
}

fn rules_json(rules: &PolicyConfig) -> Value {
    serde_json::to_value(rules).unwrap_or_default()
}

fn parse_rules(v: Value) -> Result<PolicyConfig, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

impl RuleAdmin for RuleBookGuard {
    fn file_rules(&self) -> Value {
        rules_json(self.0.file_rules())
    }

    fn app_rules(&self) -> Value {
        rules_json(&self.0.app_rules())
    }

    fn channel_rules(&self, channel: &ChannelId) -> Option<Value> {
        self.0.channel_rules(channel.as_str()).as_ref().map(rules_json)
    }

    fn set_app_rules(&self, rules: Value) -> Result<(), String> {
        self.0.set_app_rules(parse_rules(rules)?).map_err(|e| e.to_string())
    }

    fn set_channel_rules(&self, channel: &ChannelId, rules: Option<Value>) -> Result<(), String> {
        let rules = rules.map(parse_rules).transpose()?;
        self.0
            .set_channel_rules(channel.as_str(), rules)
            .map_err(|e| e.to_string())
    }
}

impl ContentGuard for RuleBookGuard {
    fn review(&self, channel: &ChannelId, text: &str) -> Review {
        match self.review_reply(channel, text) {
            ReplyReview::Reject { rule, reason, .. } => Review::Reject { rule, reason },
            ReplyReview::Allow { rewritten, flagged_by } => Review::Allow { rewritten, flagged_by },
        }
    }

    fn is_active(&self, channel: &ChannelId) -> bool {
        self.0.is_active(channel.as_str())
    }

    fn review_reply(&self, channel: &ChannelId, text: &str) -> ReplyReview {
        match self.0.check(channel.as_str(), text) {
            Verdict::Blocked { rule, reason, span } => ReplyReview::Reject { rule, reason, span },
            Verdict::Allowed { text: out, flagged_by } => ReplyReview::Allow {
                rewritten: match out {
                    Cow::Owned(t) => Some(t),
                    Cow::Borrowed(_) => None,
                },
                flagged_by,
            },
        }
    }
}
