//! Bot accounts: their settings, stopping a reply, and usage. Generating replies is the bot runtime's job
//! (crate `confab-bots`); this is the part every API surface shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_domain::bot::{Bot, BotSettings, ReplyInfo, ReplyState, UsageRecord};
use confab_domain::model::{Appended, Message, NewMessage, NewUser, UserPatch};
use confab_domain::ports::{DynBus, DynStore};
use confab_domain::{ChannelId, ChannelSeq, DomainError, DomainResult, Event, MessageId, UserId};

use crate::moderation::{ReplyBlocked, ReplyGuard};
use crate::{Actor, Confab, UserView, require_admin};

/// Writes the text of a generating bot reply as it streams in, whoever produces it (the LLM bot runtime, or
/// an application streaming a bot message, Sendbird's `send_stream`), so members see every reply stream the
/// same way: each piece is relayed at once as `Event::ReplyDelta` with its byte offset; the text so far is
/// saved every `save_interval` for clients that join late, off the relay path (relaying never waits for the
/// disk) with at most one save in flight (saves of one reply never overtake each other); the final text is
/// written after the last partial save.
///
/// With a content policy installed, the text goes through a [`ReplyGuard`] on its way: pieces are relayed
/// masked, an unfinished word is held back until it is complete, and a block rule refuses the piece that
/// completes it (the producer stops) and finishes the reply `failed`, its text cut before the blocked part.
pub struct ReplyWriter {
    bus: DynBus,
    store: DynStore,
    channel_id: ChannelId,
    id: MessageId,
    seq: ChannelSeq,
    /// The text relayed so far (what members have).
    text: String,
    guard: Option<ReplyGuard>,
    blocked: Option<ReplyBlocked>,
    save_interval: Duration,
    last_save: Instant,
    saved_len: usize,
    saving: Option<tokio::task::JoinHandle<()>>,
}

/// The end of a written reply.
#[derive(Clone, Debug)]
pub struct SettledReply {
    /// The text to store (masked, and cut before blocked text).
    pub text: String,
    /// Set when a block rule refused the reply: it must be finished `failed` with
    /// [`ReplyBlocked::failure_reason`].
    pub blocked: Option<ReplyBlocked>,
    /// Flag rules the final text matched.
    pub flagged_by: Vec<String>,
}

impl ReplyWriter {
    /// Appends `delta` to the reply and relays what the content policy lets through; a rejection means the
    /// reply is blocked: nothing more is accepted, and the producer should stop.
    pub async fn push(&mut self, delta: &str) -> Result<(), ReplyBlocked> {
        if let Some(b) = &self.blocked {
            return Err(b.clone());
        }
        if delta.is_empty() {
            return Ok(());
        }
        let released = match &mut self.guard {
            None => std::borrow::Cow::Borrowed(delta),
            Some(g) => match g.push(delta) {
                Ok(released) => std::borrow::Cow::Owned(released),
                Err(b) => {
                    tracing::info!(reply = %self.id, channel = %self.channel_id, rule = %b.rule, "bot reply blocked by moderation");
                    self.blocked = Some(b.clone());
                    return Err(b);
                }
            },
        };
        self.relay(&released).await;
        let idle = self.saving.as_ref().is_none_or(|h| h.is_finished());
        if idle && self.last_save.elapsed() >= self.save_interval && self.text.len() > self.saved_len {
            self.last_save = Instant::now();
            self.saved_len = self.text.len();
            let (store, id, text) = (self.store.clone(), self.id, self.text.clone());
            self.saving = Some(tokio::spawn(async move {
                if let Err(e) = store.save_reply_text(id, text).await {
                    tracing::warn!(reply = %id, error = %e, "cannot save reply text");
                }
            }));
        }
        Ok(())
    }

    async fn relay(&mut self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        let offset = self.text.len() as u64;
        self.text.push_str(piece);
        self.bus
            .publish(vec![Event::ReplyDelta {
                channel_id: self.channel_id.clone(),
                message_id: self.id,
                seq: self.seq,
                offset,
                delta: Arc::from(piece),
            }])
            .await;
    }

    /// Bytes received so far (before moderation; blocked text excluded).
    pub fn received_len(&self) -> usize {
        match &self.guard {
            Some(g) => g.received_len(),
            None => self.text.len(),
        }
    }

    /// Reviews the complete text, relays what was held back, waits for the save in flight (the final write
    /// must come after it) and returns the text to store.
    pub async fn settle(mut self) -> SettledReply {
        let mut settled = SettledReply {
            text: String::new(),
            blocked: self.blocked.take(),
            flagged_by: Vec::new(),
        };
        match self.guard.take() {
            None => settled.text = std::mem::take(&mut self.text),
            Some(g) => {
                let reviewed = g.finish();
                self.relay(&reviewed.rest).await;
                if settled.blocked.is_none()
                    && let Some(b) = &reviewed.blocked
                {
                    tracing::info!(reply = %self.id, channel = %self.channel_id, rule = %b.rule, "bot reply blocked by moderation");
                }
                if !reviewed.flagged_by.is_empty()
                    && let Err(e) = self.store.flag_message(self.id, reviewed.flagged_by.clone()).await
                {
                    tracing::warn!(reply = %self.id, error = %e, "cannot flag a bot reply for review");
                }
                settled.blocked = settled.blocked.or(reviewed.blocked);
                settled.text = reviewed.text;
                settled.flagged_by = reviewed.flagged_by;
            }
        }
        if let Some(h) = self.saving.take() {
            let _ = h.await;
        }
        settled
    }

    /// Finishes the reply in its one final state with the text written so far. A reply blocked by the content
    /// policy is finished `failed` with the moderation reason whatever `state` says, and the rejection is
    /// returned (`DomainError::Rejected`) once it is stored.
    pub async fn finish(self, state: ReplyState, reason: Option<String>) -> DomainResult<Message> {
        let (store, id) = (self.store.clone(), self.id);
        let settled = self.settle().await;
        match settled.blocked {
            Some(b) => {
                store
                    .finish_reply(id, settled.text, ReplyState::Failed, Some(b.failure_reason()))
                    .await?;
                Err(b.into())
            }
            None => store.finish_reply(id, settled.text, state, reason).await,
        }
    }
}

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
}

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
        Ok(name)
    }

    pub async fn delete_provider(&self, actor: &Actor, name: &str) -> DomainResult<()> {
        require_admin(actor)?;
        self.catalog()?.remove(name)?;
        self.store.delete_provider(name).await
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

    /// Starts a bot message whose text the application streams (Sendbird's `send_stream`): stored at once,
    /// `generating`, shown to members as a reply that streams. `answers` names the member's message it
    /// answers (one such message per bot and answered message).
    pub async fn begin_bot_stream(
        &self,
        actor: &Actor,
        bot: &UserId,
        channel: &ChannelId,
        answers: Option<MessageId>,
    ) -> DomainResult<Message> {
        require_admin(actor)?;
        self.store
            .get_bot(bot)
            .await?
            .ok_or_else(|| DomainError::not_found("bot", bot))?;
        if let Some(id) = answers {
            let m = self.get_message(actor, id).await?;
            if &m.channel_id != channel {
                return Err(DomainError::not_found("message", id));
            }
        }
        let appended = self.begin_reply(bot, channel, answers, None).await?;
        if appended.duplicate {
            return Err(DomainError::AlreadyExists {
                entity: "bot reply to message",
                id: answers.map(|m| m.to_string()).unwrap_or_default(),
            });
        }
        Ok(appended.message)
    }

    /// Stores a bot's reply in `channel`, `generating`: the one reply of `bot` to `trigger` (a second begin
    /// returns the first, `duplicate`), in the thread of `parent` when given. The bot answers as a member, or
    /// as invoked by a trigger that names it (see `confab_domain::rules::new_message`).
    pub async fn begin_reply(
        &self,
        bot: &UserId,
        channel: &ChannelId,
        trigger: Option<MessageId>,
        parent: Option<MessageId>,
    ) -> DomainResult<Appended> {
        let mut draft = NewMessage::text(channel.clone(), bot.clone(), String::new());
        draft.reply = Some(ReplyInfo {
            state: ReplyState::Generating,
            trigger_id: trigger,
            reason: None,
        });
        draft.parent_id = parent;
        let preconditions = confab_domain::rules::new_message(&draft);
        self.store.append_message(draft, preconditions).await
    }

    /// Puts a generating reply in its one final state, after recording the tokens it used (so once clients
    /// see the final state, its usage is readable). A reply already final stays as it was.
    pub async fn finish_reply(
        &self,
        id: MessageId,
        text: String,
        state: ReplyState,
        reason: Option<String>,
        usage: Option<UsageRecord>,
    ) -> DomainResult<Message> {
        if let Some(u) = usage
            && let Err(e) = self.record_usage(u).await
        {
            tracing::warn!(reply = %id, error = %e, "cannot record usage");
        }
        self.store.finish_reply(id, text, state, reason).await
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

    /// The writer of a generating reply's text (see [`ReplyWriter`]).
    pub fn reply_writer(&self, reply: &Message, save_interval: Duration) -> ReplyWriter {
        ReplyWriter {
            bus: self.bus.clone(),
            store: self.store.clone(),
            channel_id: reply.channel_id.clone(),
            id: reply.id,
            seq: reply.seq,
            text: String::new(),
            guard: self.reply_guard(&reply.channel_id),
            blocked: None,
            save_interval,
            last_save: Instant::now(),
            saved_len: 0,
            saving: None,
        }
    }

    /// The content policy applied to a bot reply as it streams in `channel`; `None` without a policy.
    pub fn reply_guard(&self, channel: &ChannelId) -> Option<ReplyGuard> {
        // Without a rule for the channel, a reply streams untouched (no word held back).
        self.rules
            .is_active(channel.as_str())
            .then(|| ReplyGuard::new(self.rules.clone(), channel.clone()))
    }

    /// Asks the node generating a reply to stop it. Any member of the channel may stop a reply.
    pub async fn stop_reply(&self, actor: &Actor, id: MessageId) -> DomainResult<()> {
        let m = self.get_message(actor, id).await?;
        match &m.reply {
            Some(r) if r.state == ReplyState::Generating => {}
            Some(_) => return Err(DomainError::conflict("the reply has already finished")),
            None => return Err(DomainError::conflict("the message is not a bot reply")),
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
