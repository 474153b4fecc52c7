//! The one review path of new content, for sends and edits alike: what a user may not attach, the send rate,
//! the content rules (block, mask, flag), then the send hooks (the LLM check, the application's pre-send
//! webhook). An edit is a send for every check: same order, same verdicts, flags recorded with the change.

use confab_domain::model::{Message, MessagePatch, NewMessage};
use confab_domain::{DomainError, DomainResult};

use tracing::Instrument;

use crate::moderation::{self, Draft, HookVerdict};
use crate::{Actor, Confab};

impl Confab {
    /// Screens a message about to be stored (`Draft::Send`) or the content an edit will give a stored one
    /// (`Draft::Edit`, `msg` being the message as edited). A refusal stops the write; a rewrite (masking, a
    /// hook's modification) and flags are left in `msg`.
    #[tracing::instrument(level = "debug", name = "send.screen", skip_all, fields(edit = draft != Draft::Send))]
    pub(crate) async fn screen(&self, actor: &Actor, msg: &mut NewMessage, draft: Draft) -> DomainResult<()> {
        if let Actor::User(u) = actor {
            // Bot context reaches a bot's instructions, which only the application's server may write.
            if msg
                .data
                .as_ref()
                .is_some_and(|d| d.get(confab_domain::bot::MessageBotContext::DATA_KEY).is_some())
            {
                return Err(DomainError::forbidden(
                    "only the application can attach bot context (data.bot_context) to a message",
                ));
            }
            crate::check_rate(&self.send_limiter, u)?;
        }
        if draft == Draft::Send {
            msg.validate(&self.cfg.limits)?;
        }
        if draft.text_changed() {
            self.review(msg)?;
        }
        self.pre_send(msg, draft).await
    }

    /// Screens an edit of `m` (already checked against the limits): returns the patch to store, with what the
    /// checks rewrote and the flags the new content matched.
    pub(crate) async fn screen_edit(
        &self,
        actor: &Actor,
        m: &Message,
        mut patch: MessagePatch,
    ) -> DomainResult<MessagePatch> {
        let mut draft = NewMessage {
            channel_id: m.channel_id.clone(),
            sender_id: m.sender_id.clone(),
            kind: m.kind,
            text: patch.text.clone().unwrap_or_else(|| m.text.clone()),
            custom_type: patch.custom_type.clone().unwrap_or_else(|| m.custom_type.clone()),
            data: patch.data.clone().unwrap_or_else(|| m.data.clone()),
            payload: patch.payload.clone().or_else(|| m.payload.clone()),
            mentions: m.mentions.clone(),
            client_msg_id: m.client_msg_id.clone(),
            parent_id: m.parent_id,
            file_id: m.file.as_ref().map(|f| f.id.clone()),
            reply: m.reply.clone(),
            flags: Vec::new(),
        };
        let kind = Draft::Edit {
            id: m.id,
            text_changed: patch.text.is_some(),
        };
        self.screen(actor, &mut draft, kind).await?;
        if patch.text.is_some() || draft.text != m.text {
            patch.text = Some(draft.text);
        }
        if patch.data.is_some() || draft.data != m.data {
            patch.data = Some(draft.data);
        }
        patch.flags = draft.flags;
        Ok(patch)
    }

    /// The checks after the content rules, for messages of users and the application (not bot replies as
    /// they are created, which the content rules check as they stream). A rejection stops the write; a
    /// modification is what the next check sees.
    async fn pre_send(&self, msg: &mut NewMessage, draft: Draft) -> DomainResult<()> {
        let hooks = &self.send_hooks;
        if hooks.is_empty() || (draft == Draft::Send && msg.reply.is_some()) {
            return Ok(());
        }
        for hook in hooks {
            if !hook.applies(msg, draft) {
                continue;
            }
            // One span per check: the LLM check, the application's pre-send webhook.
            let span = tracing::debug_span!("send.hook", hook = hook.name(), outcome = tracing::field::Empty);
            let verdict = match hook.check(msg, draft).instrument(span.clone()).await {
                Ok(v) => v,
                // One rule for every check without a verdict.
                Err(e) if hook.fail_open() => {
                    tracing::warn!(hook = hook.name(), error = %e, "a send check gave no verdict; allowed (fail_open)");
                    count_outcome(hook.name(), "failed_open");
                    span.record("outcome", "failed_open");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(hook = hook.name(), error = %e, "a send check gave no verdict; refused");
                    count_outcome(hook.name(), "failed_closed");
                    span.record("outcome", "failed_closed");
                    return Err(DomainError::Rejected {
                        rule: hook.name().into(),
                        reason: moderation::UNCHECKED_REASON.into(),
                    });
                }
            };
            let outcome = match &verdict {
                HookVerdict::Allow => "allow",
                HookVerdict::Flag { .. } => "flag",
                HookVerdict::Reject { .. } => "reject",
                HookVerdict::Modify { .. } => "modify",
            };
            count_outcome(hook.name(), outcome);
            span.record("outcome", outcome);
            match verdict {
                HookVerdict::Allow => {}
                HookVerdict::Flag { rule } => {
                    if !msg.flags.contains(&rule) {
                        msg.flags.push(rule);
                    }
                }
                HookVerdict::Reject { rule, reason } => {
                    tracing::info!(channel = %msg.channel_id, rule, "message rejected before it was stored");
                    return Err(DomainError::Rejected { rule, reason });
                }
                HookVerdict::Modify { text, data } => {
                    if let Some(t) = text {
                        msg.text = t;
                    }
                    if let Some(d) = data {
                        msg.data = (!d.is_null()).then_some(d);
                    }
                    msg.validate(&self.cfg.limits)?;
                }
            }
        }
        Ok(())
    }

    /// Applies the content policy to a message's text (before any bot sees it).
    fn review(&self, msg: &mut NewMessage) -> DomainResult<()> {
        use moderation::ContentGuard;
        let rules = self.rules.as_ref();
        if msg.text.is_empty() || !ContentGuard::is_active(rules, &msg.channel_id) {
            return Ok(());
        }
        let span = tracing::debug_span!("moderation.rules", verdict = tracing::field::Empty).entered();
        match rules.review(&msg.channel_id, &msg.text) {
            moderation::Review::Reject { rule, reason } => {
                span.record("verdict", "reject");
                tracing::info!(channel = %msg.channel_id, rule, "message rejected by moderation");
                Err(DomainError::Rejected { rule, reason })
            }
            moderation::Review::Allow { rewritten, flagged_by } => {
                span.record(
                    "verdict",
                    match (&rewritten, flagged_by.is_empty()) {
                        (_, false) => "flag",
                        (Some(_), true) => "mask",
                        (None, true) => "allow",
                    },
                );
                if let Some(text) = rewritten {
                    msg.text = text;
                }
                // Stored with the message (or the edit), in the same transaction, for review.
                msg.flags = flagged_by;
                Ok(())
            }
        }
    }
}

/// Counts how each send check ended, by check and outcome.
fn count_outcome(hook: &'static str, outcome: &'static str) {
    metrics::counter!("confab_send_hook_outcomes_total", "hook" => hook, "outcome" => outcome).increment(1);
}
