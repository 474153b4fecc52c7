//! Bot accounts: their settings, stopping a reply, and usage. Generating replies is the bot runtime's job
//! (crate `confab-bots`); this is the part every API surface shares.

use std::sync::Arc;

use confab_domain::bot::{Bot, BotSettings, UsageRecord};
use confab_domain::model::{Message, NewMessage, NewUser, UserPatch};
use confab_domain::settings::announce_setting;
use confab_domain::{DomainError, DomainResult, Event, UserId};

use crate::{Actor, Confab, UserView, require_admin};

/// A bot as the API shows it: its account and its settings.
#[derive(Clone, Debug)]
pub struct BotView {
    pub user: UserView,
    pub bot: Bot,
}

/// The LLM providers bots can use. Implemented by the bot runtime, which builds providers; the service only
/// checks names and passes configurations through as JSON (no provider types in the service layer).
pub trait ProviderCatalog: Send + Sync {
    fn names(&self) -> Vec<String>;
    /// Every provider's configuration as shown to the application (never secrets), and where it came from.
    fn describe(&self) -> Vec<serde_json::Value>;
    /// Validates and builds a provider from its configuration, replacing one added before under its name;
    /// returns the name. Providers from the configuration file cannot be replaced.
    fn add(&self, config: serde_json::Value) -> DomainResult<String>;
    fn remove(&self, name: &str) -> DomainResult<()>;
    /// Follows a change another node stored: rebuilds the provider added through the admin API under
    /// `name` from `config`, or forgets it (`None`). Never touches the configuration file's providers.
    fn replace_stored(&self, name: &str, config: Option<serde_json::Value>);
    /// Makes the providers added through the admin API exactly the stored ones.
    fn sync_stored(&self, stored: Vec<(String, serde_json::Value)>);
}

/// The namespace under which provider changes are announced to the other nodes (the providers themselves
/// are stored by [`Store::put_provider`](confab_domain::ports::Store::put_provider)).
pub const PROVIDERS_NAMESPACE: &str = "providers";

/// Sees a user's message before it is stored, so work that only needs the commit at the end can start at
/// once: the bot runtime opens the LLM call while the triggering message commits, and shows nothing of the
/// reply until the message is durable. Called after every check the service makes (permissions, rate,
/// validation, and any future moderation): only the store may still refuse the message.
pub trait SendObserver: Send + Sync {
    /// Called before the append; a ticket is settled with the append's outcome.
    fn sending(&self, draft: &NewMessage) -> Option<Box<dyn SendTicket>>;

    /// Called once a message the application sent (not a retry) is stored: the application may invoke the
    /// bots it mentions beyond the users' rule (where they are not members).
    fn sent_by_application(&self, _stored: &Message) {}
}

pub trait SendTicket: Send {
    /// The stored message, or `None` when the append failed or matched an earlier send (a retry). A ticket
    /// dropped unsettled (the sender went away mid-append) means the outcome is unknown.
    fn settled(self: Box<Self>, stored: Option<&Message>);
}

/// Who spoke a turn of a conversation handed to a bot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnRole {
    User,
    Assistant,
}

/// What a bot's answer outside any channel streams: text as it is generated; the stream ends after the last
/// delta when the answer is complete, or with `Failed` (after any text already sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerEvent {
    Delta(String),
    Failed {
        /// The provider or the bot is saturated (retrying later may work), as opposed to a failure.
        busy: bool,
        /// Safe to show: never a secret or an upstream body.
        message: String,
    },
    /// Refused by the content policy (after any text before the blocked part); nothing more follows.
    Rejected {
        rule: String,
        reason: String,
    },
}

/// Answers a conversation the application hands over whole (Sendbird's `ai_chatbot_replies`), through the
/// same providers, budgets, concurrency caps and metrics as replies in channels. Implemented by the bot
/// runtime. Dropping the receiver stops the generation.
#[async_trait::async_trait]
pub trait BotAnswerer: Send + Sync {
    async fn answer(
        &self,
        bot: &UserId,
        turns: Vec<(TurnRole, String)>,
    ) -> DomainResult<tokio::sync::mpsc::Receiver<AnswerEvent>>;
}

/// The bot runtime as the service sees it, held weakly: the runtime owns the service, not the reverse.
pub(crate) struct BotRuntimeLink {
    observer: std::sync::Weak<dyn SendObserver>,
    answerer: std::sync::Weak<dyn BotAnswerer>,
}

impl Confab {
    /// Attaches the bot runtime: what sees sends (to start replies) and answers stateless requests. Once; a
    /// second runtime is refused (`Conflict`).
    pub fn attach_bot_runtime(
        &self,
        observer: std::sync::Weak<dyn SendObserver>,
        answerer: std::sync::Weak<dyn BotAnswerer>,
    ) -> DomainResult<()> {
        self.bot_runtime
            .set(BotRuntimeLink { observer, answerer })
            .map_err(|_| DomainError::conflict("a bot runtime is already attached"))
    }

    /// A bot's answer to `turns` (oldest first, the last one the user's). The application only.
    pub async fn answer_as_bot(
        &self,
        actor: &Actor,
        bot: &UserId,
        turns: Vec<(TurnRole, String)>,
    ) -> DomainResult<tokio::sync::mpsc::Receiver<AnswerEvent>> {
        require_admin(actor)?;
        if turns.is_empty() {
            return Err(DomainError::invalid("messages", "at least one message is required"));
        }
        if turns.last().is_some_and(|(r, _)| *r != TurnRole::User) {
            return Err(DomainError::invalid("messages", "the last message must be the user's"));
        }
        let total: usize = turns.iter().map(|(_, t)| t.chars().count()).sum();
        let max = self.cfg.limits.max_text_chars * 20;
        if total > max {
            return Err(DomainError::LimitExceeded {
                what: "characters of messages",
                limit: max as u64,
            });
        }
        let answerer = self
            .bot_runtime
            .get()
            .and_then(|r| r.answerer.upgrade())
            .ok_or_else(|| DomainError::Unavailable("the bot runtime is not running".into()))?;
        answerer.answer(bot, turns).await
    }

    pub(crate) fn send_observer(&self) -> Option<std::sync::Arc<dyn SendObserver>> {
        self.bot_runtime.get().and_then(|r| r.observer.upgrade())
    }

    fn catalog(&self) -> DomainResult<std::sync::Arc<dyn ProviderCatalog>> {
        self.providers
            .clone()
            .ok_or_else(|| DomainError::Unavailable("no provider catalog".into()))
    }

    /// Adds (or replaces) a provider through the admin API; it is stored and rebuilt on every start.
    pub async fn add_provider(&self, actor: &Actor, config: serde_json::Value) -> DomainResult<String> {
        require_admin(actor)?;
        let catalog = self.catalog()?;
        let name = catalog.add(config.clone())?;
        if let Err(e) = self.store.put_provider(&name, config).await {
            let _ = catalog.remove(&name);
            return Err(e);
        }
        announce_setting(&*self.bus, PROVIDERS_NAMESPACE, &name).await;
        Ok(name)
    }

    pub async fn delete_provider(&self, actor: &Actor, name: &str) -> DomainResult<()> {
        require_admin(actor)?;
        self.catalog()?.remove(name)?;
        self.store.delete_provider(name).await?;
        announce_setting(&*self.bus, PROVIDERS_NAMESPACE, name).await;
        Ok(())
    }

    /// Rebuilds one provider added through the admin API as the store now holds it (another node changed
    /// it), or, with `None`, every one of them.
    pub(crate) async fn reload_providers(&self, name: Option<&str>) -> DomainResult<()> {
        let Some(catalog) = self.providers.clone() else {
            return Ok(());
        };
        let stored = self.store.list_providers().await?;
        match name {
            Some(name) => {
                let config = stored.into_iter().find(|(n, _)| n == name).map(|(_, c)| c);
                catalog.replace_stored(name, config);
            }
            None => catalog.sync_stored(stored),
        }
        Ok(())
    }

    pub fn list_providers(&self, actor: &Actor) -> DomainResult<Vec<serde_json::Value>> {
        require_admin(actor)?;
        Ok(self.catalog()?.describe())
    }

    fn check_providers(&self, s: &BotSettings) -> DomainResult<()> {
        let names = self.catalog().map(|c| c.names()).unwrap_or_default();
        // A bot without a provider is answered by the application (see `BotSettings::callback_url`).
        let first = std::iter::once(&s.provider).filter(|p| !p.trim().is_empty());
        for p in first.chain(&s.fallbacks) {
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

    pub async fn get_bot(&self, actor: &Actor, id: &UserId) -> DomainResult<BotView> {
        let bot = self
            .store
            .get_bot(id)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", id))?;
        let mut view = self.bot_view(bot).await?;
        crate::public_profile_for(actor, &mut view.user.user);
        Ok(view)
    }

    pub async fn list_bots(&self, actor: &Actor) -> DomainResult<Vec<BotView>> {
        let mut out = Vec::new();
        for bot in self.store.list_bots().await? {
            let mut view = self.bot_view(bot).await?;
            crate::public_profile_for(actor, &mut view.user.user);
            out.push(view);
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

    /// Adds tokens an answer used to the usage counters (for one that is not a stored reply).
    pub async fn record_usage(&self, usage: UsageRecord) -> DomainResult<()> {
        self.store.record_usage(usage).await
    }

    /// Announces that a member's message triggered bots answering through their callback URL
    /// (`Event::BotTriggered`, one per bot) through the store: the outbox records them durably when this
    /// returns `Ok` (when some webhook endpoint takes `bot.triggered`), and the relay delivers them (the
    /// Sendbird surface's callback format, to each bot's URL), retried and dead-lettered like every webhook.
    pub async fn trigger_callbacks(
        &self,
        bots: impl IntoIterator<Item = UserId>,
        message: &Arc<Message>,
    ) -> DomainResult<()> {
        let events: Vec<Event> = bots
            .into_iter()
            .map(|bot| Event::BotTriggered {
                bot,
                message: message.clone(),
            })
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        self.store.announce(events).await
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
