//! Bot accounts: their settings, stopping a reply, and usage. Generating replies is the bot runtime's job
//! (crate `confab-bots`); this is the part every API surface shares.

use confab_domain::bot::{Bot, BotSettings, ReplyState, UsageRecord};
use confab_domain::model::{NewUser, UserPatch};
use confab_domain::{DomainError, DomainResult, Event, MessageId, UserId};

use crate::{Actor, Confab, UserView, require_admin};

/// A bot as the API shows it: its account and its settings.
#[derive(Clone, Debug)]
pub struct BotView {
    pub user: UserView,
    pub bot: Bot,
}

impl Confab {
    /// The providers bots may name (set by the server from its configuration).
    pub fn set_provider_names(&self, names: Vec<String>) {
        *self.provider_names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn check_providers(&self, s: &BotSettings) -> DomainResult<()> {
        let names = self.provider_names.read().unwrap_or_else(|e| e.into_inner());
        for p in std::iter::once(&s.provider).chain(&s.fallbacks) {
            if !names.iter().any(|n| n == p) {
                return Err(DomainError::invalid(
                    "provider",
                    format!("no provider named {p:?} is configured (known: {})", names.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub async fn create_bot(&self, actor: &Actor, user: NewUser, settings: BotSettings) -> DomainResult<BotView> {
        require_admin(actor)?;
        user.validate()?;
        settings.validate()?;
        self.check_providers(&settings)?;
        let bot = self.store.create_bot(user, settings).await?;
        self.bot_view(bot).await
    }

    async fn bot_view(&self, bot: Bot) -> DomainResult<BotView> {
        let user = self
            .store
            .get_user(&bot.id)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", &bot.id))?;
        Ok(BotView {
            user: UserView { online: true, user },
            bot,
        })
    }

    pub async fn get_bot(&self, _actor: &Actor, id: &UserId) -> DomainResult<BotView> {
        let bot = self
            .store
            .get_bot(id)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", id))?;
        self.bot_view(bot).await
    }

    pub async fn list_bots(&self, _actor: &Actor) -> DomainResult<Vec<BotView>> {
        let mut out = Vec::new();
        for bot in self.store.list_bots().await? {
            out.push(self.bot_view(bot).await?);
        }
        Ok(out)
    }

    /// Replaces the bot's settings; a profile patch changes its account (nickname, avatar).
    pub async fn update_bot(
        &self,
        actor: &Actor,
        id: &UserId,
        settings: Option<BotSettings>,
        profile: UserPatch,
    ) -> DomainResult<BotView> {
        require_admin(actor)?;
        profile.validate()?;
        let mut bot = self
            .store
            .get_bot(id)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", id))?;
        if let Some(s) = settings {
            s.validate()?;
            self.check_providers(&s)?;
            bot = self.store.update_bot(id, s).await?;
        }
        if profile.nickname.is_some() || profile.profile_url.is_some() || profile.metadata.is_some() {
            self.store.update_user(id, profile).await?;
        }
        self.bot_view(bot).await
    }

    pub async fn delete_bot(&self, actor: &Actor, id: &UserId) -> DomainResult<()> {
        require_admin(actor)?;
        self.store
            .get_bot(id)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", id))?;
        self.store.delete_user(id).await
    }

    /// Asks the node generating a reply to stop it. Any member of the channel may stop a reply.
    pub async fn stop_reply(&self, actor: &Actor, id: MessageId) -> DomainResult<()> {
        let m = self.get_message(actor, id).await?;
        match &m.reply {
            Some(r) if r.state == ReplyState::Generating => {}
            Some(_) => return Err(DomainError::invalid("message_id", "the reply has already finished")),
            None => return Err(DomainError::invalid("message_id", "not a bot reply")),
        }
        self.bus
            .publish(vec![Event::ReplyStopRequested {
                channel_id: m.channel_id.clone(),
                message_id: id,
                by: actor.user().cloned(),
            }])
            .await;
        Ok(())
    }

    /// Token usage per day, bot, user and channel (application only).
    pub async fn usage(
        &self,
        actor: &Actor,
        from_day: &str,
        to_day: &str,
        bot: Option<&UserId>,
        user: Option<&UserId>,
    ) -> DomainResult<Vec<UsageRecord>> {
        require_admin(actor)?;
        for d in [from_day, to_day] {
            if d.len() != 10
                || !d.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
            {
                return Err(DomainError::invalid("day", "days are YYYY-MM-DD"));
            }
        }
        self.store.usage(from_day, to_day, bot, user).await
    }
}
