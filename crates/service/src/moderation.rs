//! Content review before a message is stored, for every surface: a port the server fills with the
//! configured policy (crate `confab-moderation`, as [`RuleBookGuard`]). The service applies the verdict: a rejection refuses the
//! send with the rule's reason, a rewrite (masking) replaces the text that is stored and delivered.

use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
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
pub use rule_book::RuleBookGuard;

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
/// stored message with the edit applied). Answers within its own budget (a timeout is a verdict too: allow
/// or reject as configured).
#[async_trait::async_trait]
pub trait SendHook: Send + Sync {
    async fn check(&self, msg: &confab_domain::model::NewMessage, draft: Draft) -> HookVerdict;
}

/// The rules in force as the admin API manages them, as JSON in the shape of the configuration's
/// `[moderation]` section (`{rules: [...], max_links}`). Implemented by the server's guard; the service
/// checks the caller and the channel, installs, and stores (settings namespace `moderation`).
pub trait RuleAdmin: Send + Sync {
    /// The configuration file's rules (read-only at run time).
    fn file_rules(&self) -> Value;
    fn app_rules(&self) -> Value;
    fn channel_rules(&self, channel: &ChannelId) -> Option<Value>;
    /// Compiles and installs; on error (naming the rule) nothing changes.
    fn set_app_rules(&self, rules: Value) -> Result<(), String>;
    fn set_channel_rules(&self, channel: &ChannelId, rules: Option<Value>) -> Result<(), String>;
}

/// Where the rules set through the admin API are kept.
pub const RULES_NAMESPACE: &str = "moderation";
pub const APP_RULES_KEY: &str = "app";

/// The settings key of a channel's rules.
pub fn channel_rules_key(channel: &ChannelId) -> String {
    format!("channel:{channel}")
}

/// The application's rules and a channel's rules, as the admin API shows them.
pub struct RulesView {
    pub file: Value,
    pub app: Value,
}

impl Confab {
    pub fn set_rule_admin(&self, admin: std::sync::Arc<dyn RuleAdmin>) {
        *self.rule_admin.write().unwrap_or_else(|e| e.into_inner()) = Some(admin);
    }

    fn rule_admin(&self, actor: &Actor) -> DomainResult<std::sync::Arc<dyn RuleAdmin>> {
        require_admin(actor)?;
        self.rule_admin
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| DomainError::Unavailable("moderation rules are not managed on this server".into()))
    }

    /// Drops a deleted channel's own rules, so a channel created later under the same id starts without them.
    pub(crate) async fn forget_channel_rules(&self, channel: &ChannelId) -> DomainResult<()> {
        let admin = self.rule_admin.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(admin) = admin else { return Ok(()) };
        if admin.channel_rules(channel).is_none() {
            return Ok(());
        }
        self.store
            .delete_setting(RULES_NAMESPACE, &channel_rules_key(channel))
            .await?;
        let _ = admin.set_channel_rules(channel, None);
        Ok(())
    }

    pub fn moderation_rules(&self, actor: &Actor) -> DomainResult<RulesView> {
        let admin = self.rule_admin(actor)?;
        Ok(RulesView {
            file: admin.file_rules(),
            app: admin.app_rules(),
        })
    }

    /// Replaces the application's rules added through the API (the configuration file's stay).
    pub async fn set_moderation_rules(&self, actor: &Actor, rules: Value) -> DomainResult<Value> {
        let admin = self.rule_admin(actor)?;
        let before = admin.app_rules();
        admin
            .set_app_rules(rules)
            .map_err(|e| DomainError::invalid("rules", e))?;
        let installed = admin.app_rules();
        if let Err(e) = self
            .store
            .put_setting(RULES_NAMESPACE, APP_RULES_KEY, installed.clone())
            .await
        {
            let _ = admin.set_app_rules(before);
            return Err(e);
        }
        Ok(installed)
    }

    pub async fn channel_moderation_rules(&self, actor: &Actor, channel: &ChannelId) -> DomainResult<Option<Value>> {
        let admin = self.rule_admin(actor)?;
        self.get_channel(actor, channel).await?;
        Ok(admin.channel_rules(channel))
    }

    /// Replaces (or, with `None`, removes) a channel's own rules, applied besides the application's.
    pub async fn set_channel_moderation_rules(
        &self,
        actor: &Actor,
        channel: &ChannelId,
        rules: Option<Value>,
    ) -> DomainResult<Option<Value>> {
        let admin = self.rule_admin(actor)?;
        self.get_channel(actor, channel).await?;
        let before = admin.channel_rules(channel);
        admin
            .set_channel_rules(channel, rules)
            .map_err(|e| DomainError::invalid("rules", e))?;
        let installed = admin.channel_rules(channel);
        let key = channel_rules_key(channel);
        let stored = match &installed {
            Some(v) => self.store.put_setting(RULES_NAMESPACE, &key, v.clone()).await,
            None => self.store.delete_setting(RULES_NAMESPACE, &key).await.map(drop),
        };
        if let Err(e) = stored {
            let _ = admin.set_channel_rules(channel, before);
            return Err(e);
        }
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
