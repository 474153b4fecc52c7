//! Sendbird bot callbacks: a message that addresses a bot with a callback URL (a bot created through
//! `/v3/bots` with `bot_callback_url`) is POSTed to that URL as `category: bot_message_notification`, with
//! the bot's `bot_token` inside (how Sendbird tells applications to authenticate callbacks) and, like
//! webhooks, `x-sendbird-signature`. Which messages address a bot is the bot runtime's decision (it publishes
//! `Event::BotTriggered`); delivery is the shared dispatcher's (timeout, retries, egress policy).

use std::sync::Arc;

use confab_domain::model::Message;
use confab_domain::ports::Subscription;
use confab_domain::{DomainResult, Event, UserId, now_millis};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::SendbirdState;
use crate::bots::callback_attributes;
use crate::webhooks::{channel_json, message_payload, people_of};

/// Follows `BotTriggered` events until `shutdown`.
pub fn start(st: SendbirdState, shutdown: CancellationToken) {
    let mut stream = st
        .service
        .subscribe(Subscription {
            interest: |e| matches!(e, Event::BotTriggered { .. }),
            partitions: 1,
        })
        .pop()
        .expect("one partition");
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = stream.next() => ev,
            };
            match ev {
                Some(Event::BotTriggered { bot, message }) => {
                    let st = st.clone();
                    tokio::spawn(async move {
                        if let Err(e) = notify(&st, &bot, &message).await {
                            tracing::warn!(bot = %bot, error = %e, "cannot build a sendbird bot callback");
                        }
                    });
                }
                Some(_) => {}
                None => break,
            }
        }
    });
}

async fn notify(st: &SendbirdState, bot_id: &UserId, m: &Arc<Message>) -> DomainResult<()> {
    let lookup = st.service.lookup();
    let (Some(bot), Some(bot_user), Some(channel)) = (
        lookup.bot(bot_id).await?,
        lookup.user(bot_id).await?,
        lookup.channel(&m.channel_id).await?,
    ) else {
        return Ok(()); // deleted since
    };
    if bot.settings.callback_url.is_empty() {
        return Ok(());
    }
    let (bot_token, show_member) = match callback_attributes(st, bot_id).await {
        Ok(a) => a,
        Err(e) => return Err(confab_domain::DomainError::Internal(e.to_string())),
    };
    let (sender, mentioned) = people_of(&st.service, m).await?;
    let mut message = message_payload(m);
    // Sendbird's callbacks carry the text as `message.text`.
    message["text"] = json!(m.text);
    message["type"] = json!(crate::dto::message_type(m.kind));
    let mut payload = json!({
        "category": "bot_message_notification",
        "app_id": st.webhooks.app_id(),
        "ts": now_millis(),
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
        payload["members"] = st.webhooks.users_json(&ids).await?;
    }
    st.webhooks
        .post("sendbird.bot_callback", &bot.settings.callback_url, &payload);
    Ok(())
}
