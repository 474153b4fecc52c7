//! Sendbird bot callbacks: a message that addresses a bot with a callback URL (a bot created through
//! `/v3/bots` with `bot_callback_url`, or any bot whose settings have a `callback_url`) is POSTed to that URL
//! as `category: bot_message_notification`, with the bot's `bot_token` inside (how Sendbird tells
//! applications to authenticate callbacks) and, like webhooks, `x-sendbird-signature`.
//!
//! Which messages address a bot is the bot runtime's decision; it announces each as `Event::BotTriggered`
//! through the store, so the outbox records it (type `bot.triggered`) as it is decided. The surface keeps
//! one outbox endpoint for every callback (id and format [`FORMAT`], shown by the admin API with its
//! attempts and dead letters) that has no URL of its own: [`CallbackFormat`] names each event's, the bot's
//! callback URL at the time of the attempt. The relay delivers them like every webhook: at least once,
//! retried with backoff for the retry period and then dead-lettered, in order per channel and bot (one bot's
//! failing URL does not hold back another's), each URL checked by the egress policy as it connects.

use std::sync::Weak;

use async_trait::async_trait;
use bytes::Bytes;
use confab_domain::model::Message;
use confab_domain::outbox::{RecordedChange, RecordedEvent};
use confab_domain::{DomainError, DomainResult, UserId};
use confab_service::webhooks::{ManagedEndpoint, WebhookFormat};
use serde_json::{Value, json};

use crate::bots::callback_attributes;
use crate::webhooks::{SendbirdWebhooks, channel_json, message_payload, people_of};

/// The name of the format, and the id of the outbox endpoint that delivers every callback.
pub const FORMAT: &str = "sendbird_callbacks";

/// The endpoint of every callback: no URL of its own, every bot trigger.
pub(crate) fn endpoint() -> ManagedEndpoint {
    ManagedEndpoint {
        format: FORMAT,
        url: String::new(),
        events: vec![BOT_TRIGGERED.to_string()],
        enabled: true,
    }
}

/// The outbox's event type of a bot trigger.
const BOT_TRIGGERED: &str = "bot.triggered";

/// Sendbird's callback format for the outbox relay. Holds the surface weakly, as [`SendbirdWebhooks`]'s
/// webhook format does.
pub(crate) struct CallbackFormat(pub(crate) Weak<SendbirdWebhooks>);

impl CallbackFormat {
    fn hooks(&self) -> DomainResult<std::sync::Arc<SendbirdWebhooks>> {
        self.0
            .upgrade()
            .ok_or_else(|| DomainError::Unavailable("the Sendbird surface has stopped".into()))
    }
}

#[async_trait]
impl WebhookFormat for CallbackFormat {
    fn name(&self) -> &'static str {
        FORMAT
    }

    async fn render(&self, event: &RecordedEvent) -> DomainResult<Option<Bytes>> {
        let RecordedChange::BotTriggered { bot, message } = &event.change else {
            return Ok(None);
        };
        let hooks = self.hooks()?;
        Ok(payload(&hooks, bot, message, event.timestamp)
            .await?
            .map(|p| Bytes::from(p.to_string())))
    }

    fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        match self.0.upgrade() {
            Some(hooks) => vec![
                ("user-agent", "SendBird".to_string()),
                ("x-sendbird-signature", hooks.sign(body)),
            ],
            None => Vec::new(),
        }
    }

    /// The bot's callback URL as it is now; none once the bot is gone or answers without one.
    async fn url(&self, event: &RecordedEvent) -> DomainResult<Option<String>> {
        let RecordedChange::BotTriggered { bot, .. } = &event.change else {
            return Ok(None);
        };
        let hooks = self.hooks()?;
        Ok(hooks
            .service()
            .lookup()
            .bot(bot)
            .await?
            .map(|b| b.settings.callback_url)
            .filter(|url| !url.is_empty()))
    }

    fn lane(&self, event: &RecordedEvent) -> Option<String> {
        match &event.change {
            RecordedChange::BotTriggered { bot, .. } => Some(bot.as_str().to_string()),
            _ => None,
        }
    }
}

/// Sendbird's `bot_message_notification` for a trigger of `bot_id` by `m`; `None` when the bot was deleted
/// since, or no longer has a callback URL.
async fn payload(hooks: &SendbirdWebhooks, bot_id: &UserId, m: &Message, ts: i64) -> DomainResult<Option<Value>> {
    let service = hooks.service();
    let lookup = service.lookup();
    let (Some(bot), Some(bot_user), Some(channel)) = (
        lookup.bot(bot_id).await?,
        lookup.user(bot_id).await?,
        lookup.channel(&m.channel_id).await?,
    ) else {
        return Ok(None); // deleted since
    };
    if bot.settings.callback_url.is_empty() {
        return Ok(None);
    }
    let (bot_token, show_member) = callback_attributes(service, bot_id)
        .await
        .map_err(|e| DomainError::Internal(e.to_string()))?;
    let (sender, mentioned) = people_of(service, m).await?;
    let mut message = message_payload(m);
    // Sendbird's callbacks carry the text as `message.text`.
    message["text"] = json!(m.text);
    message["type"] = json!(crate::dto::message_type(m.kind));
    let mut payload = json!({
        "category": "bot_message_notification",
        "app_id": hooks.app_id(),
        "ts": ts,
        "bot": {
            "bot_userid": bot_id.as_str(),
            "bot_nickname": bot_user.nickname,
            "bot_profile_url": bot_user.profile_url,
            "bot_token": bot_token,
        },
        "sender": sender,
        "channel": channel_json(&channel),
        "message": message,
        "mentioned": mentioned,
    });
    if show_member {
        let ids = lookup.member_ids(&m.channel_id).await?;
        payload["members"] = hooks.users_json(&ids).await?;
    }
    Ok(Some(payload))
}
