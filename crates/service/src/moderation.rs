//! Content review before a message is stored, for every surface, by the rules in force: the configuration
//! file's, the application's and each channel's, compiled by `confab-moderation`'s [`RuleBook`], which the
//! service owns. The service applies the verdict: a rejection refuses the send with the rule's reason, a
//! rewrite (masking) replaces the text that is stored and delivered. The admin API's rule sets are kept in
//! settings (namespace [`RULES_NAMESPACE`]).

use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
use confab_domain::settings::announce_setting;
use confab_domain::{ChannelId, DomainError, DomainResult, MessageId};
use serde_json::Value;

use crate::{Actor, Confab, require_admin};

/// What the policy says of a message's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Review {
    Allow {
        /// The text to store instead (masked), if any rule changed it.
        rewritten: Option<String>,
        /// Flag rules that matched: the message is stored as is and listed for review.
        flagged_by: Vec<String>,
    },
    Reject {
        rule: String,
        reason: String,
    },
}

/// A content policy as sends, edits and bot replies apply it: the service's [`RuleBook`]; a seam for the
/// reply guard's tests.
pub trait ContentGuard: Send + Sync {
    fn review(&self, channel: &ChannelId, text: &str) -> Review;

    /// Whether any rule applies in the channel: without one, sends and replies skip the review.
    fn is_active(&self, _channel: &ChannelId) -> bool {
        true
    }

    /// Reviews a bot reply's text (as it streams, and when complete), saying where a rejection starts. The
    /// default cannot say, so a rejection cuts the whole reply.
    fn review_reply(&self, channel: &ChannelId, text: &str) -> ReplyReview {
        self.review(channel, text).into()
    }
}

mod reply;
mod rule_book;
pub use reply::{ReplyBlocked, ReplyGuard, ReplyReview, ReviewedReply};

/// What the application's pre-send check says of a message about to be stored.
#[derive(Clone, Debug, PartialEq)]
pub enum HookVerdict {
    Allow,
    /// Refused; `rule` names who refused (the application's code, or the hook itself), `reason` is for the
    /// sender.
    Reject {
        rule: String,
        reason: String,
    },
    /// Allowed, and listed for review as flagged by `rule`.
    Flag {
        rule: String,
    },
    /// Allowed with new content (validated again against the limits).
    Modify {
        text: Option<String>,
        data: Option<Value>,
    },
}

/// What a check looks at: a message about to be stored, or the content an edit gives a stored message (an
/// edit is a send for every check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draft {
    Send,
    Edit {
        /// The message edited.
        id: MessageId,
        /// Whether the edit changes the text (a check of the text alone may skip an edit that does not).
        text_changed: bool,
    },
}

impl Draft {
    pub fn text_changed(self) -> bool {
        match self {
            Draft::Send => true,
            Draft::Edit { text_changed, .. } => text_changed,
        }
    }
}

/// A check of every user message before it is stored (and of every edit), after the content rules: the LLM
/// check, the application's pre-send webhook. `msg` is the message as it will be stored (for an edit, the
/// stored message with the edit applied). A check answers within its own budget, with a verdict or with why
/// it has none (timed out, unreachable, an unreadable answer); what happens then is one rule, the service's
/// ([`Confab::pre_send`](crate::Confab)): the message is stored as sent when the check is `fail_open`, else
/// refused with [`UNCHECKED_REASON`].
#[async_trait::async_trait]
pub trait SendHook: Send + Sync {
    /// The check's name: the rule of its verdicts and of a refusal without one, and its metrics label.
    fn name(&self) -> &'static str;

    /// Without a verdict: stored as sent (true) or refused (false).
    fn fail_open(&self) -> bool;

    /// Whether the check looks at this message at all (the LLM check judges text only, so it skips a
    /// message without text and an edit that keeps it).
    fn applies(&self, _msg: &confab_domain::model::NewMessage, _draft: Draft) -> bool {
        true
    }

    async fn check(&self, msg: &confab_domain::model::NewMessage, draft: Draft) -> Result<HookVerdict, String>;
}

/// The reason a message is refused with when a check that fails closed gave no verdict.
pub const UNCHECKED_REASON: &str = "The message could not be checked right now; try again.";

pub use confab_moderation::{PolicyConfig, RuleBook};

/// Where the rules set through the admin API are kept.
pub const RULES_NAMESPACE: &str = "moderation";
pub const APP_RULES_KEY: &str = "app";

/// The settings key of a channel's rules.
pub fn channel_rules_key(channel: &ChannelId) -> String {
    format!("channel:{channel}")
}

/// The application's rules and a channel's rules, as the admin API shows them.
pub struct RulesView {
    /// The configuration file's `[moderation]` rules (read-only at run time).
    pub file: PolicyConfig,
    /// The rules added through the admin API, applied besides the file's.
    pub app: PolicyConfig,
}

/// A rule set as the admin API and the settings store hold it: JSON in the shape of the configuration's
/// `[moderation]` section (`{rules: [...], max_links}`).
pub fn parse_rules(v: Value) -> DomainResult<PolicyConfig> {
    serde_json::from_value(v).map_err(|e| DomainError::invalid("rules", e.to_string()))
}

/// A rule set as JSON, in the shape [`parse_rules`] reads.
pub fn rules_json(rules: &PolicyConfig) -> Value {
    serde_json::to_value(rules).unwrap_or_default()
}

impl Confab {
    /// Installs the rule sets stored through the admin API (the application's and each channel's) beside the
    /// configuration file's, in place of the ones held (a channel whose rules are no longer stored loses
    /// them). A stored set that no longer compiles is logged and skipped, so the server still starts with the
    /// others.
    pub async fn load_moderation_rules(&self) -> DomainResult<()> {
        let stored = self.store.list_settings(RULES_NAMESPACE).await?;
        let mut held: std::collections::HashSet<String> = self.rules.channels().into_iter().collect();
        let mut app = None;
        for (key, value) in stored {
            if key == APP_RULES_KEY {
                app = Some(value);
                continue;
            }
            if let Some(channel) = key.strip_prefix("channel:") {
                held.remove(channel);
            }
            self.install_rules(&key, Some(value));
        }
        self.install_rules(APP_RULES_KEY, app);
        for channel in held {
            let _ = self.rules.set_channel_rules(&channel, None);
        }
        Ok(())
    }

    /// Reloads one stored rule set (another node changed it).
    pub(crate) async fn reload_moderation_rules(&self, key: &str) -> DomainResult<()> {
        let value = self.store.get_setting(RULES_NAMESPACE, key).await?;
        self.install_rules(key, value);
        Ok(())
    }

    /// Installs the rules stored under `key` (`None`: there are none).
    fn install_rules(&self, key: &str, value: Option<Value>) {
        let installed = value.map(parse_rules).transpose().and_then(|r| {
            let done = match (key, key.strip_prefix("channel:")) {
                (APP_RULES_KEY, _) => self.rules.set_app_rules(r.unwrap_or_default()),
                (_, Some(channel)) => self.rules.set_channel_rules(channel, r),
                _ => Ok(()),
            };
            done.map_err(|e| DomainError::invalid("rules", e.to_string()))
        });
        if let Err(e) = installed {
            tracing::error!(key, error = %e, "stored moderation rules do not compile; skipped");
        }
    }

    /// Drops a deleted channel's own rules, so a channel created later under the same id starts without them.
    pub(crate) async fn forget_channel_rules(&self, channel: &ChannelId) -> DomainResult<()> {
        if self.rules.channel_rules(channel.as_str()).is_none() {
            return Ok(());
        }
        self.store
            .delete_setting(RULES_NAMESPACE, &channel_rules_key(channel))
            .await?;
        let _ = self.rules.set_channel_rules(channel.as_str(), None);
        announce_setting(&*self.bus, RULES_NAMESPACE, &channel_rules_key(channel)).await;
        Ok(())
    }

    pub fn moderation_rules(&self, actor: &Actor) -> DomainResult<RulesView> {
        require_admin(actor)?;
        Ok(RulesView {
            file: self.rules.file_rules().clone(),
            app: self.rules.app_rules(),
        })
    }

    /// Replaces the application's rules added through the API (the configuration file's stay). A rule that
    /// does not compile is refused with its name and nothing changes.
    pub async fn set_moderation_rules(&self, actor: &Actor, rules: PolicyConfig) -> DomainResult<PolicyConfig> {
        require_admin(actor)?;
        let before = self.rules.app_rules();
        self.rules
            .set_app_rules(rules)
            .map_err(|e| DomainError::invalid("rules", e.to_string()))?;
        let installed = self.rules.app_rules();
        if let Err(e) = self
            .store
            .put_setting(RULES_NAMESPACE, APP_RULES_KEY, rules_json(&installed))
            .await
        {
            let _ = self.rules.set_app_rules(before);
            return Err(e);
        }
        announce_setting(&*self.bus, RULES_NAMESPACE, APP_RULES_KEY).await;
        Ok(installed)
    }

    pub async fn channel_moderation_rules(
        &self,
        actor: &Actor,
        channel: &ChannelId,
    ) -> DomainResult<Option<PolicyConfig>> {
        require_admin(actor)?;
        self.get_channel(actor, channel).await?;
        Ok(self.rules.channel_rules(channel.as_str()))
    }

    /// Replaces (or, with `None`, removes) a channel's own rules, applied besides the application's.
    pub async fn set_channel_moderation_rules(
        &self,
        actor: &Actor,
        channel: &ChannelId,
        rules: Option<PolicyConfig>,
    ) -> DomainResult<Option<PolicyConfig>> {
        require_admin(actor)?;
        self.get_channel(actor, channel).await?;
        let before = self.rules.channel_rules(channel.as_str());
        self.rules
            .set_channel_rules(channel.as_str(), rules)
            .map_err(|e| DomainError::invalid("rules", e.to_string()))?;
        let installed = self.rules.channel_rules(channel.as_str());
        let key = channel_rules_key(channel);
        let stored = match &installed {
            Some(r) => self.store.put_setting(RULES_NAMESPACE, &key, rules_json(r)).await,
            None => self.store.delete_setting(RULES_NAMESPACE, &key).await.map(drop),
        };
        if let Err(e) = stored {
            let _ = self.rules.set_channel_rules(channel.as_str(), before);
            return Err(e);
        }
        announce_setting(&*self.bus, RULES_NAMESPACE, &key).await;
        Ok(installed)
    }

    /// Flagged messages, oldest first (the application only).
    pub async fn list_flags(&self, actor: &Actor, mut query: FlagQuery) -> DomainResult<Vec<FlaggedMessage>> {
        require_admin(actor)?;
        query.limit = self.page(query.limit);
        self.store.list_flags(query).await
    }

    /// Approves a flagged message, or removes it (deleted for everyone); returns the flag as it ends up.
    pub async fn review_flag(&self, actor: &Actor, id: MessageId, state: FlagState) -> DomainResult<FlaggedMessage> {
        require_admin(actor)?;
        if state == FlagState::Pending {
            return Err(DomainError::invalid("state", "a review approves or removes"));
        }
        self.store.review_flag(id, state, actor.user().cloned()).await?;
        self.store
            .get_flag(id)
            .await?
            .ok_or_else(|| DomainError::not_found("flagged message", id))
    }
}
