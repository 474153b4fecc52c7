//! The bot runtime: watches committed messages, decides which bots they trigger, and streams each bot's
//! reply from its LLM provider into the channel as one message that ends in exactly one final state.
//!
//! Per trigger: the reply row is created at once (`generating`, which clients show as "thinking"), the
//! provider is called with the triggering channel's recent messages only, each delta is relayed to the
//! channel's members as it arrives (`message.delta`), the text is saved a few times a second, and the row is
//! finished `complete`, `stopped`, `failed` (with a reason) or `interrupted`. Stop requests cancel the upstream
//! stream (dropping it closes the HTTP connection).

pub mod cap;
pub mod catalog;
pub mod context;
pub mod moderator;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use confab_domain::bot::{Bot, BotSettings, BotTrigger, ReplyState, UsageRecord, utc_day};
use confab_domain::model::{ChannelKind, HistoryQuery, HistoryRange, Message, NewMessage};
use confab_domain::ports::Subscription;
use confab_domain::{ChannelId, ChannelSeq, DomainError, Event, MessageId, UserId, now_millis};
use confab_llm::{Fallback, LlmError, LlmProvider, StreamEvent};
use confab_service::Confab;
use confab_service::bots::{AnswerEvent, BotAnswerer, SendObserver, SendTicket, TurnRole};
use confab_service::moderation::ReplyBlocked;
use futures_util::{FutureExt, StreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Replies generated at once over all bots; more wait up to `queue_timeout`.
    pub max_concurrent_replies: usize,
    pub queue_timeout: Duration,
    /// How often the text of a generating reply is saved.
    pub save_interval: Duration,
    /// Triggers a user may cause per minute (all bots together).
    pub user_triggers_per_minute: u32,
    /// Longest text of one reply or answer in bytes, whatever the provider streams (see [`cap`]).
    pub max_reply_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_replies: 64,
            queue_timeout: Duration::from_secs(30),
            save_interval: Duration::from_millis(250),
            user_triggers_per_minute: 20,
            max_reply_bytes: 64 * 1024,
        }
    }
}

pub use catalog::Catalog;

/// Which channels have bot members, and what kind they are; filled on first use, kept current by events.
#[derive(Clone)]
struct ChannelBots {
    kind: ChannelKind,
    bots: Vec<UserId>,
    /// Every member, kept only for channels with bots (an early start must know the sender is a member).
    members: Arc<HashSet<UserId>>,
}

impl ChannelBots {
    fn new(kind: ChannelKind, members: Vec<UserId>, is_bot: impl Fn(&UserId) -> bool) -> Self {
        let bots: Vec<UserId> = members.iter().filter(|m| is_bot(m)).cloned().collect();
        let members = if bots.is_empty() {
            Arc::default()
        } else {
            Arc::new(members.into_iter().collect())
        };
        ChannelBots { kind, bots, members }
    }
}

/// Client message ids of recent triggers, so a retried send (same client id) is not started early: the
/// store would answer it with the original, and the early call would waste provider tokens. Two
/// generations, rotated every [`RECENT_TRIGGERS_WINDOW`]: a bounded memory of the last few minutes.
#[derive(Default)]
struct RecentTriggers {
    current: HashSet<(UserId, String)>,
    previous: HashSet<(UserId, String)>,
    rotated_at: Option<Instant>,
}

impl RecentTriggers {
    fn insert(&mut self, key: (UserId, String)) {
        let now = Instant::now();
        let fresh = self.rotated_at.is_some_and(|t| {
            now.duration_since(t) < RECENT_TRIGGERS_WINDOW && self.current.len() < RECENT_TRIGGERS_MAX
        });
        if !fresh {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = Some(now);
        }
        self.current.insert(key);
    }

    fn contains(&self, key: &(UserId, String)) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }
}

pub struct BotRuntime {
    service: Arc<Confab>,
    providers: Arc<Catalog>,
    cfg: RuntimeConfig,
    bots: RwLock<HashMap<UserId, Bot>>,
    channels: Mutex<HashMap<ChannelId, ChannelBots>>,
    active: Mutex<HashMap<MessageId, CancellationToken>>,
    global: Semaphore,
    per_bot: Mutex<HashMap<UserId, Arc<Semaphore>>>,
    triggers: DefaultKeyedRateLimiter<UserId>,
    /// Triggers seen before their commit (see [`SendObserver`]); short-lived, so a small list.
    early: Mutex<Vec<EarlyTrigger>>,
    next_early: AtomicU64,
    recent: Mutex<RecentTriggers>,
    me: std::sync::Weak<BotRuntime>,
}

impl BotRuntime {
    /// Loads the bots and starts watching the event stream.
    pub async fn start(
        service: Arc<Confab>,
        providers: Arc<Catalog>,
        cfg: RuntimeConfig,
    ) -> Result<Arc<BotRuntime>, DomainError> {
        let per_min = NonZeroU32::new(cfg.user_triggers_per_minute.max(1)).expect("max(1)");
        let rt = Arc::new_cyclic(|me| BotRuntime {
            global: Semaphore::new(cfg.max_concurrent_replies.max(1)),
            triggers: RateLimiter::keyed(Quota::per_minute(per_min)),
            service: service.clone(),
            providers,
            cfg,
            bots: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            per_bot: Mutex::new(HashMap::new()),
            early: Mutex::new(Vec::new()),
            next_early: AtomicU64::new(1),
            recent: Mutex::default(),
            me: me.clone(),
        });
        for bot in service.lookup().bots().await? {
            rt.bots
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(bot.id.clone(), bot);
        }
        let mut events = service
            .subscribe(Subscription {
                interest: BotRuntime::wants,
                partitions: 1,
            })
            .pop()
            .expect("one partition");
        let observer: std::sync::Weak<dyn SendObserver> = Arc::downgrade(&rt) as _;
        let answerer: std::sync::Weak<dyn BotAnswerer> = Arc::downgrade(&rt) as _;
        service.attach_bot_runtime(observer, answerer)?;
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(rt) = weak.upgrade() else { break };
                rt.on_event(ev).await;
            }
        });
        Ok(rt)
    }

    /// The events the runtime acts on: never the deltas, typing and presence that make most of the traffic.
    fn wants(ev: &Event) -> bool {
        matches!(
            ev,
            Event::MessageCreated(_)
                | Event::ChannelCreated { .. }
                | Event::BotChanged(_)
                | Event::UserDeleted(_)
                | Event::MembersJoined { .. }
                | Event::MemberLeft { .. }
                | Event::ChannelDeleted { .. }
                | Event::ReplyStopRequested { .. }
        )
    }

    /// Replies being generated right now.
    pub fn active_replies(&self) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn any_callback_bot(&self) -> bool {
        self.bots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|b| !b.settings.callback_url.is_empty())
    }

    fn is_bot(&self, id: &UserId) -> bool {
        self.bots.read().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    async fn on_event(self: &Arc<Self>, ev: Event) {
        match ev {
            Event::MessageCreated(m) => {
                let sender_is_bot = m.sender_id.as_ref().is_none_or(|s| self.is_bot(s));
                if sender_is_bot || m.reply.is_some() || m.deleted {
                    return; // bots never trigger bots: no loops
                }
                // Seen before its commit: its replies started early; only callbacks may be left to tell.
                let claimed = self.claim(&m, None);
                if claimed && !self.any_callback_bot() {
                    return;
                }
                // Most messages go to channels without bots: settle those here, without a task per message.
                let names_a_bot = m.mentions.iter().any(|b| self.is_bot(b));
                let no_bots = !names_a_bot
                    && (self.bots.read().unwrap_or_else(|e| e.into_inner()).is_empty()
                        || self
                            .channels
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&m.channel_id)
                            .is_some_and(|c| c.bots.is_empty()));
                if no_bots {
                    return;
                }
                // Decided off the event loop, so a burst of triggers never delays stops or other events.
                let rt = self.clone();
                tokio::spawn(async move {
                    let bots = rt.triggered_bots(&m).await;
                    let answering = rt.announce(bots, &m).await;
                    if !claimed {
                        rt.answer(answering, &m);
                    }
                });
            }
            Event::BotChanged(id) => match self.service.lookup().bot(&id).await {
                Ok(Some(bot)) => {
                    self.bots.write().unwrap_or_else(|e| e.into_inner()).insert(id, bot);
                    self.channels.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(bot = %id, error = %e, "cannot reload bot"),
            },
            Event::UserDeleted(id) => {
                let was_bot = self
                    .bots
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                    .is_some();
                if was_bot {
                    self.channels.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
            }
            Event::ChannelCreated { channel, members } => {
                // Known from the start, so the channel's first message can trigger early (see `early_bots`).
                let entry = ChannelBots::new(channel.kind, members.to_vec(), |m| self.is_bot(m));
                self.remember_channel(&channel.id, entry);
            }
            Event::MembersJoined { channel, .. } | Event::MemberLeft { channel, .. } => {
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&channel.id);
            }
            Event::ChannelDeleted { channel_id, .. } => {
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&channel_id);
            }
            Event::ReplyStopRequested { message_id, .. } => {
                if let Some(t) = self.active.lock().unwrap_or_else(|e| e.into_inner()).get(&message_id) {
                    t.cancel();
                }
            }
            _ => {}
        }
    }

    async fn channel_bots(&self, channel: &ChannelId) -> Option<ChannelBots> {
        if let Some(c) = self.channels.lock().unwrap_or_else(|e| e.into_inner()).get(channel) {
            return Some(c.clone());
        }
        let lookup = self.service.lookup();
        let ch = lookup.channel(channel).await.ok()??;
        let members = lookup.member_ids(channel).await.ok()?;
        let entry = ChannelBots::new(ch.kind, members, |m| self.is_bot(m));
        self.remember_channel(channel, entry.clone());
        Some(entry)
    }

    fn remember_channel(&self, channel: &ChannelId, entry: ChannelBots) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels.len() >= CHANNEL_CACHE_MAX {
            channels.clear(); // refilled on use
        }
        channels.insert(channel.clone(), entry);
    }

    /// A message to a bot in a 1:1 channel; in a group, what [`addressed_bots`] says, or a follow-up in a
    /// thread the bot started or was mentioned in, when the bot replies in threads.
    async fn triggered_bots(&self, m: &Message) -> Vec<Bot> {
        let Some(ch) = self.channel_bots(&m.channel_id).await else {
            return Vec::new();
        };
        if ch.bots.is_empty() && !m.mentions.iter().any(|b| self.is_bot(b)) {
            return Vec::new();
        }
        let mut ids: Vec<UserId> = {
            let all = self.bots.read().unwrap_or_else(|e| e.into_inner());
            addressed_bots(ch.kind, &ch.bots, |b| settings_of(&all, b), &m.mentions, &m.text)
                .filter(|b| Some(*b) != m.sender_id.as_ref())
                .cloned()
                .collect()
        };
        if ids.is_empty()
            && ch.kind == ChannelKind::Group
            && let Some(parent_id) = m.parent_id
            && let Ok(Some(parent)) = self.service.lookup().message(parent_id).await
        {
            let bots = self.bots.read().unwrap_or_else(|e| e.into_inner());
            ids = ch
                .bots
                .iter()
                .filter(|b| bots.get(*b).is_some_and(|bot| bot.settings.reply_in_threads))
                .filter(|b| {
                    parent.sender_id.as_ref() == Some(*b)
                        || parent.mentions.contains(b)
                        || mentions_in_text(&parent.text, b)
                })
                .cloned()
                .collect();
        }
        let bots = self.bots.read().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter_map(|id| bots.get(id).cloned()).collect()
    }

    /// What the application may do beyond the users' rule ([`addressed_bots`]): a message it sends (master
    /// token, Sendbird's `Api-Token`, NIM's credentials: NIM's `robotAccount`) invokes every bot in its
    /// mention list, even where the bot is not a member and is not summonable. The bot answers in that
    /// channel; the store accepts such a reply because the trigger mentions the bot. Bots the users' rule
    /// already addresses are left to the commit event (one reply per bot and trigger either way).
    async fn invoked_by_application(self: Arc<Self>, m: Arc<Message>) {
        let Some(ch) = self.channel_bots(&m.channel_id).await else {
            return;
        };
        let bots: Vec<Bot> = {
            let all = self.bots.read().unwrap_or_else(|e| e.into_inner());
            m.mentions
                .iter()
                .filter(|b| !ch.bots.contains(b) && Some(*b) != m.sender_id.as_ref())
                .filter_map(|b| all.get(b))
                .filter(|b| !b.settings.summonable)
                .cloned()
                .collect()
        };
        let answering = self.announce(bots, &m).await;
        self.answer(answering, &m);
    }

    /// Announces a trigger to the application for the bots among `bots` that have a callback; returns those
    /// that answer with an LLM.
    async fn announce(&self, bots: Vec<Bot>, m: &Arc<Message>) -> Vec<Bot> {
        let callbacks = bots.iter().filter(|b| !b.settings.callback_url.is_empty());
        self.service.trigger_callbacks(callbacks.map(|b| b.id.clone()), m).await;
        bots.into_iter().filter(|b| b.settings.answers_with_llm()).collect()
    }

    /// Starts one reply per bot to the trigger `m`.
    fn answer(self: &Arc<Self>, bots: Vec<Bot>, m: &Arc<Message>) {
        if !bots.is_empty() {
            self.remember_trigger(m);
        }
        for bot in bots {
            tokio::spawn(self.clone().reply(bot, m.clone()));
        }
    }

    fn bot_semaphore(&self, bot: &Bot) -> Arc<Semaphore> {
        self.per_bot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bot.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(bot.settings.max_concurrent.max(1) as usize)))
            .clone()
    }

    /// The bots a message about to be stored triggers, when that can be decided without the store (the
    /// channel's bots are cached, and no thread parent must be read); `None` leaves it to the commit event.
    fn early_bots(&self, draft: &NewMessage) -> Option<(ChannelKind, Vec<Bot>)> {
        let sender = draft.sender_id.as_ref()?;
        if draft.reply.is_some() || self.is_bot(sender) {
            return None;
        }
        let ch = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&draft.channel_id)?
            .clone();
        if ch.bots.is_empty() || !ch.members.contains(sender) {
            return None; // the store will refuse a non-member; never call a provider for one
        }
        if let Some(cid) = &draft.client_msg_id {
            let key = (sender.clone(), cid.clone());
            let pending = self
                .early
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|e| e.sender == key.0 && e.client_msg_id.as_ref() == Some(&key.1));
            if pending || self.recent.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
                return None; // a retry: the store returns the original, whose replies exist
            }
        }
        let all = self.bots.read().unwrap_or_else(|e| e.into_inner());
        // Only LLM replies start early; callbacks are told after the commit.
        let bots: Vec<Bot> = addressed_bots(
            ch.kind,
            &ch.bots,
            |b| settings_of(&all, b),
            &draft.mentions,
            &draft.text,
        )
        .filter_map(|id| all.get(id).filter(|b| b.settings.answers_with_llm()).cloned())
        .collect();
        (!bots.is_empty()).then_some((ch.kind, bots))
    }

    /// Hands a stored message to the early replies waiting for it. True when it had been seen early (then
    /// the commit event must not start replies of its own).
    fn claim(&self, m: &Arc<Message>, ticket: Option<u64>) -> bool {
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        let found = early.iter().position(|e| match ticket {
            Some(id) => e.id == id,
            None => e.stored == Some(m.id) || e.stored.is_none() && e.matches(m),
        });
        let Some(i) = found else { return false };
        let entry = &mut early[i];
        for w in entry.waiting.drain(..) {
            let _ = w.send(m.clone());
        }
        match ticket {
            // Settled before its event arrived: keep the entry so the event recognises the message.
            Some(_) => entry.stored = Some(m.id),
            None => {
                early.swap_remove(i);
            }
        }
        drop(early);
        self.remember_trigger(m);
        true
    }

    /// Records a message that triggered replies, so a retry of it (same sender and client id) never starts
    /// replies early. Only triggers are recorded: other messages start nothing a retry could repeat.
    fn remember_trigger(&self, m: &Message) {
        if let (Some(sender), Some(cid)) = (&m.sender_id, &m.client_msg_id) {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((sender.clone(), cid.clone()));
        }
    }

    /// Forgets an early trigger: its message was not stored (or the wait for it gave up).
    fn forget_early(&self, id: u64) {
        self.early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| e.id != id);
    }

    /// Handles one trigger after its commit, from start to its one final state.
    async fn reply(self: Arc<Self>, bot: Bot, trigger: Arc<Message>) {
        let triggered_at = Instant::now();
        // Context: the triggering channel only, up to the trigger; read while the reply row is created.
        let history = self.service.lookup().history(HistoryQuery {
            channel_id: trigger.channel_id.clone(),
            range: HistoryRange::Before(ChannelSeq(trigger.seq.0 + 1)),
            limit: bot.settings.context_messages.max(1),
        });
        let (reply, history) = tokio::join!(self.create_reply(&bot, &trigger), history);
        let Some(reply) = reply else {
            return;
        };
        let stop = self.track(&reply);
        let kind = self
            .channel_bots(&trigger.channel_id)
            .await
            .map(|c| c.kind)
            .unwrap_or(ChannelKind::Group);
        let opened = match self.prepare(&bot, &trigger, kind, history).await {
            Ok(p) => tokio::select! {
                _ = stop.cancelled() => Err(Outcome::stopped(String::new())),
                o = self.open(&bot, p, triggered_at) => o,
            },
            Err(o) => Err(o),
        };
        let outcome = match opened {
            Ok(opened) => self.relay(opened, &reply, &stop).await,
            Err(o) => o,
        };
        self.finish(&bot, &trigger, &reply, outcome).await;
    }

    /// Handles one trigger seen before its commit: the context is read and the upstream call opened while
    /// the message commits; the reply row is created once the message is stored, and nothing of the reply
    /// is shown before. If the message is not stored, the upstream call is dropped (closed).
    async fn reply_early(
        self: Arc<Self>,
        bot: Bot,
        trigger: Message,
        kind: ChannelKind,
        stored: oneshot::Receiver<Arc<Message>>,
        early_id: u64,
    ) {
        let triggered_at = Instant::now();
        // Context, checks and the upstream call on one side; the commit and the reply row on the other.
        let opening = async {
            let history = self
                .service
                .lookup()
                .history(HistoryQuery {
                    channel_id: trigger.channel_id.clone(),
                    range: HistoryRange::Latest,
                    limit: bot.settings.context_messages.max(1) + 1,
                })
                .await
                .map(|h| early_context(h, &trigger, bot.settings.context_messages));
            match self.prepare(&bot, &trigger, kind, history).await {
                Ok(p) => self.open(&bot, p, triggered_at).await,
                Err(o) => Err(o),
            }
        };
        tokio::pin!(opening);
        let wait_stored = async {
            let trigger = tokio::time::timeout(EARLY_COMMIT_WAIT, stored).await.ok()?.ok()?;
            let reply = self.create_reply(&bot, &trigger).await?;
            Some((trigger, reply))
        };
        tokio::pin!(wait_stored);
        let mut opened = None;
        let stored = loop {
            tokio::select! {
                s = &mut wait_stored => break s,
                o = &mut opening, if opened.is_none() => opened = Some(o),
            }
        };
        let Some((trigger, reply)) = stored else {
            self.forget_early(early_id);
            return; // not stored, a retry of an earlier send, or its reply exists: the upstream call is dropped
        };
        let stop = self.track(&reply);
        let opened = match opened {
            Some(o) => o,
            None => tokio::select! {
                _ = stop.cancelled() => Err(Outcome::stopped(String::new())),
                o = &mut opening => o,
            },
        };
        let outcome = match opened {
            Ok(opened) => self.relay(opened, &reply, &stop).await,
            Err(o) => o,
        };
        self.finish(&bot, &trigger, &reply, outcome).await;
    }

    /// Creates the reply row (`generating`); `None` when it exists already (one per bot and trigger) or
    /// cannot be stored.
    async fn create_reply(&self, bot: &Bot, trigger: &Message) -> Option<Message> {
        let begun = self
            .service
            .begin_reply(&bot.id, &trigger.channel_id, Some(trigger.id), trigger.parent_id)
            .await;
        match begun {
            Ok(a) if a.duplicate => None,
            Ok(a) => Some(a.message),
            Err(e) => {
                tracing::warn!(bot = %bot.id, trigger = %trigger.id, error = %e, "cannot create the reply");
                None
            }
        }
    }

    /// Makes a generating reply stoppable.
    fn track(&self, reply: &Message) -> CancellationToken {
        let token = CancellationToken::new();
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reply.id, token.clone());
        token
    }

    /// Records usage and stores the reply's one final state.
    async fn finish(&self, bot: &Bot, trigger: &Message, reply: &Message, outcome: Outcome) {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&reply.id);
        let (state, reason) = match &outcome.end {
            End::Complete => (ReplyState::Complete, None),
            End::Truncated => (ReplyState::Complete, Some(cap::LENGTH.to_string())),
            End::Stopped => (ReplyState::Stopped, None),
            End::Failed(r) => (ReplyState::Failed, Some(r.clone())),
            End::Interrupted(r) => (ReplyState::Interrupted, Some(r.clone())),
            End::Blocked(b) => (ReplyState::Failed, Some(b.failure_reason())),
        };
        metrics::counter!("confab_bot_replies_total", "state" => state.as_str()).increment(1);
        if outcome.called {
            metrics::counter!("confab_llm_tokens_total", "kind" => "prompt").increment(outcome.prompt_tokens as u64);
            metrics::counter!("confab_llm_tokens_total", "kind" => "completion")
                .increment(outcome.completion_tokens as u64);
        }
        let usage = match (&trigger.sender_id, outcome.called) {
            (Some(user), true) => Some(UsageRecord {
                day: utc_day(now_millis()),
                bot_id: bot.id.clone(),
                user_id: user.clone(),
                channel_id: trigger.channel_id.clone(),
                prompt_tokens: outcome.prompt_tokens as u64,
                completion_tokens: outcome.completion_tokens as u64,
                replies: 1,
            }),
            _ => None,
        };
        let finished = self
            .service
            .finish_reply(reply.id, outcome.text, state, reason, usage)
            .await;
        if let Err(e) = finished {
            tracing::error!(reply = %reply.id, error = %e, "cannot finish the reply; the restart sweep will");
        }
    }

    /// Checks and context before the call: the user's trigger rate, the request from `history` (the
    /// triggering channel's recent messages, ending with the trigger), the token budgets, the providers.
    async fn prepare(
        &self,
        bot: &Bot,
        trigger: &Message,
        kind: ChannelKind,
        history: Result<Vec<Message>, DomainError>,
    ) -> Result<Prepared, Outcome> {
        let s = &bot.settings;
        let Some(user) = trigger.sender_id.clone() else {
            return Err(Outcome::failed("no sender"));
        };
        if self.triggers.check_key(&user).is_err() {
            return Err(Outcome::failed(
                "Too many requests to bots; wait a minute and try again.",
            ));
        }
        let history =
            history.map_err(|e| Outcome::failed(&format!("could not read the conversation: {}", short(&e))))?;
        let req = context::build_request(&bot.id, s, kind, &history);
        let prompt_estimate = context::estimate_request(&req);
        self.check_budget(bot, &user, prompt_estimate + req.max_tokens)
            .await
            .map_err(|msg| Outcome::failed(&msg))?;
        let providers: Vec<Arc<dyn LlmProvider>> = std::iter::once(&s.provider)
            .chain(&s.fallbacks)
            .filter_map(|name| self.providers.get(name))
            .collect();
        if providers.is_empty() {
            return Err(Outcome::failed("This bot's provider is not configured."));
        }
        Ok(Prepared {
            req,
            providers,
            prompt_estimate,
        })
    }

    /// Waits for the concurrency permits (global and per bot, with a deadline) and opens the upstream stream.
    async fn open(&self, bot: &Bot, p: Prepared, triggered_at: Instant) -> Result<Opened<'_>, Outcome> {
        let bot_sem = self.bot_semaphore(bot);
        let permits = tokio::time::timeout(self.cfg.queue_timeout, async {
            let a = self.global.acquire().await;
            let b = bot_sem.acquire_owned().await;
            (a, b)
        })
        .await;
        let permits = match permits {
            Ok((Ok(a), Ok(b))) => (a, b),
            _ => {
                return Err(Outcome {
                    busy: true,
                    ..Outcome::failed("The bot is busy right now; try again shortly.")
                });
            }
        };
        // The server's own work before the upstream call: trigger handling, context, checks.
        metrics::histogram!("confab_bot_overhead_seconds").record(triggered_at.elapsed().as_secs_f64());
        let called_at = Instant::now();
        let max_tokens = p.req.max_tokens;
        match Fallback::new(p.providers).stream(p.req).await {
            Ok(stream) => Ok(Opened {
                stream,
                _permits: permits,
                called_at,
                prompt_estimate: p.prompt_estimate,
                max_tokens,
            }),
            Err(e) => {
                metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                Err(Outcome {
                    text: String::new(),
                    end: End::Failed(e.user_message()),
                    busy: is_saturation(&e),
                    called: true,
                    prompt_tokens: p.prompt_estimate,
                    completion_tokens: 0,
                })
            }
        }
    }

    /// Relays the upstream stream into the reply until it ends or is stopped.
    async fn relay(&self, opened: Opened<'_>, reply: &Message, stop: &CancellationToken) -> Outcome {
        let Opened {
            mut stream,
            _permits,
            called_at,
            prompt_estimate,
            max_tokens,
        } = opened;
        let mut writer = self.service.reply_writer(reply, self.cfg.save_interval);
        let mut cap = cap::ReplyCap::new(max_tokens, self.cfg.max_reply_bytes);
        let mut out = Outcome {
            text: String::new(),
            end: End::Complete,
            busy: false,
            called: true,
            prompt_tokens: prompt_estimate,
            completion_tokens: 0,
        };
        let mut usage_reported = false;
        let mut first_token = true;
        // An item read ahead while coalescing deltas, handled next.
        let mut ahead: Option<Option<Result<StreamEvent, LlmError>>> = None;
        loop {
            let item = match ahead.take() {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        drop(stream); // closes the upstream connection
                        out.end = End::Stopped;
                        break;
                    }
                    item = stream.next() => item,
                },
            };
            match item {
                Some(Ok(StreamEvent::Delta(mut d))) => {
                    // Deltas that already arrived go out as one frame; nothing waits for more.
                    loop {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(StreamEvent::Delta(more)))) => d.push_str(&more),
                            Some(other) => {
                                ahead = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    if d.is_empty() {
                        continue;
                    }
                    if first_token {
                        first_token = false;
                        metrics::histogram!("confab_llm_time_to_first_token_seconds")
                            .record(called_at.elapsed().as_secs_f64());
                    }
                    let received = Instant::now();
                    let full = cap.take(&mut d);
                    if let Err(blocked) = writer.push(&d).await {
                        drop(stream); // the rest of the generation is not wanted: close the upstream connection
                        out.end = End::Blocked(blocked);
                        break;
                    }
                    // Provider delta received → handed to the fan-out.
                    metrics::histogram!("confab_bot_relay_seconds").record(received.elapsed().as_secs_f64());
                    if full {
                        drop(stream); // at its length limit, whatever the provider would still send
                        out.end = End::Truncated;
                        break;
                    }
                }
                Some(Ok(StreamEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                })) => {
                    usage_reported = true;
                    out.prompt_tokens = prompt_tokens;
                    out.completion_tokens = completion_tokens;
                    if cap.over_reported(completion_tokens) {
                        drop(stream);
                        out.end = End::Truncated;
                        break;
                    }
                }
                Some(Ok(StreamEvent::Done { finish_reason })) => {
                    out.end = if cap::is_length(finish_reason.as_deref()) {
                        End::Truncated
                    } else {
                        End::Complete
                    };
                    break;
                }
                Some(Err(e)) => {
                    metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                    out.end = failure(&e, writer.received_len() == 0);
                    break;
                }
                None => {
                    out.end = failure(
                        &LlmError::StreamCut("the stream ended early".into()),
                        writer.received_len() == 0,
                    );
                    break;
                }
            }
        }
        let settled = writer.settle().await;
        out.text = settled.text;
        if let Some(blocked) = settled.blocked {
            // Also when the blocked text was only complete at the end of the stream.
            out.end = End::Blocked(blocked);
        }
        if !usage_reported {
            out.completion_tokens = context::estimate_tokens(&out.text);
        }
        metrics::histogram!("confab_llm_upstream_seconds").record(called_at.elapsed().as_secs_f64());
        out
    }

    /// Checks the day's usage against the bot's per-user and per-bot budgets, with this call's estimate.
    async fn check_budget(&self, bot: &Bot, user: &UserId, estimate: u32) -> Result<(), String> {
        let s = &bot.settings;
        if s.user_daily_tokens == 0 && s.bot_daily_tokens == 0 {
            return Ok(());
        }
        let today = utc_day(now_millis());
        let rows = self
            .service
            .lookup()
            .usage(&today, &today, Some(&bot.id), None)
            .await
            .map_err(|e| format!("could not check the token budget: {}", short(&e)))?;
        let spent = |f: &dyn Fn(&UsageRecord) -> bool| -> u64 {
            rows.iter()
                .filter(|r| f(r))
                .map(|r| r.prompt_tokens + r.completion_tokens)
                .sum()
        };
        if s.user_daily_tokens > 0 && spent(&|r| &r.user_id == user) + estimate as u64 > s.user_daily_tokens {
            return Err("Your token budget with this bot is used up for today.".into());
        }
        if s.bot_daily_tokens > 0 && spent(&|_| true) + estimate as u64 > s.bot_daily_tokens {
            return Err("This bot's token budget is used up for today.".into());
        }
        Ok(())
    }
}

fn short(e: &DomainError) -> String {
    match e {
        DomainError::Internal(_) | DomainError::Unavailable(_) => "temporarily unavailable".into(),
        other => other.to_string(),
    }
}

fn error_kind(e: &LlmError) -> &'static str {
    match e {
        LlmError::Timeout { .. } => "timeout",
        LlmError::RateLimited { .. } => "rate_limited",
        LlmError::Upstream { .. } => "upstream",
        LlmError::StreamCut(_) => "stream_cut",
        LlmError::CircuitOpen { .. } => "circuit_open",
        LlmError::Overloaded => "overloaded",
        LlmError::Config(_) => "config",
        LlmError::Transport(_) => "transport",
    }
}

/// Whether an error says the provider is saturated rather than broken.
fn is_saturation(e: &LlmError) -> bool {
    matches!(
        e,
        LlmError::RateLimited { .. } | LlmError::Overloaded | LlmError::CircuitOpen { .. }
    )
}

/// An error before any text is a failure; after some text, the reply was interrupted.
fn failure(e: &LlmError, nothing_received: bool) -> End {
    if nothing_received {
        End::Failed(e.user_message())
    } else {
        End::Interrupted(e.user_message())
    }
}

/// The context of an early reply: the channel's latest messages as read while the trigger commits, then
/// the trigger as sent. The read may already see the trigger stored (and even messages after it): the
/// context then ends just before it.
fn early_context(mut history: Vec<Message>, trigger: &Message, limit: u32) -> Vec<Message> {
    if let Some(i) = history.iter().rposition(|m| {
        // Stored after this draft was made, so not an earlier message with the same text.
        m.created_at >= trigger.created_at
            && m.sender_id == trigger.sender_id
            && m.client_msg_id == trigger.client_msg_id
            && m.text == trigger.text
            && m.reply.is_none()
    }) {
        history.truncate(i);
    }
    let keep = (limit as usize).saturating_sub(1);
    if history.len() > keep {
        history.drain(..history.len() - keep);
    }
    history.push(trigger.clone());
    history
}

/// Who may make a bot speak, for a user's message (the one rule, before the commit and after it). A bot
/// answers where it is a member: every message of a 1:1 channel; in a group, the messages that mention it
/// (mention list or `@id` in the text), a command naming it (`/id ...`), every command for a bot in
/// Sendbird's privacy mode, every message for one that takes them all. Outside its channels, only a
/// summonable bot answers, and only to a mention in the mention list. `members` are the channel's bots;
/// `settings` knows every bot. Thread follow-ups are decided separately (they need the parent). What the
/// application may do beyond this is [`BotRuntime::invoked_by_application`].
fn addressed_bots<'a>(
    kind: ChannelKind,
    members: &'a [UserId],
    settings: impl Fn(&UserId) -> Option<&'a BotSettings> + Copy + 'a,
    mentions: &'a [UserId],
    text: &'a str,
) -> impl Iterator<Item = &'a UserId> + 'a {
    let trigger = move |b: &UserId| settings(b).map_or(BotTrigger::Mentions, |s| s.trigger);
    let member = members.iter().filter(move |b| {
        kind == ChannelKind::Direct
            || trigger(b) == BotTrigger::AllMessages
            || trigger(b) == BotTrigger::MentionsAndCommands && text.starts_with('/')
            || commands(text, b)
            || mentions.contains(b)
            || mentions_in_text(text, b)
    });
    let summoned = mentions
        .iter()
        .filter(move |b| !members.contains(b) && settings(b).is_some_and(|s| s.summonable));
    member.chain(summoned)
}

/// `@id` in the text, not followed by more id characters.
fn mentions_in_text(text: &str, bot: &UserId) -> bool {
    let needle = format!("@{bot}");
    text.match_indices(&needle).any(|(i, _)| {
        let before_ok = i == 0 || !text[..i].ends_with(|c: char| c.is_ascii_alphanumeric());
        before_ok && ends_id(&text[i + needle.len()..])
    })
}

/// A command naming the bot: `/id` at the start of the text, not followed by more id characters.
fn commands(text: &str, bot: &UserId) -> bool {
    text.strip_prefix('/')
        .and_then(|t| t.strip_prefix(bot.as_str()))
        .is_some_and(ends_id)
}

/// Whether an id just before `after` ends there (no more id characters follow).
fn ends_id(after: &str) -> bool {
    !after.starts_with(|c: char| {
        c.is_ascii_alphanumeric()
            || c == '_'
            || c == '-'
            || c == '.' && after[1..].starts_with(|c: char| c.is_ascii_alphanumeric())
    })
}

fn settings_of<'a>(bots: &'a HashMap<UserId, Bot>, id: &UserId) -> Option<&'a BotSettings> {
    bots.get(id).map(|b| &b.settings)
}

/// How long client ids of triggers are remembered (at least; at most twice), and how many per generation.
const RECENT_TRIGGERS_WINDOW: Duration = Duration::from_secs(300);
const RECENT_TRIGGERS_MAX: usize = 100_000;

/// Channels whose bots are remembered; beyond this the cache starts over.
const CHANNEL_CACHE_MAX: usize = 100_000;

/// How long an early reply waits for its trigger's commit before giving up (the commit event then starts
/// the reply the ordinary way).
const EARLY_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// A message seen before its commit that triggers bots; their early replies wait for the stored message.
struct EarlyTrigger {
    id: u64,
    channel: ChannelId,
    sender: UserId,
    client_msg_id: Option<String>,
    text: String,
    /// Set when the sender's append returned before the commit event arrived.
    stored: Option<MessageId>,
    waiting: Vec<oneshot::Sender<Arc<Message>>>,
}

impl EarlyTrigger {
    fn matches(&self, m: &Message) -> bool {
        m.channel_id == self.channel
            && m.sender_id.as_ref() == Some(&self.sender)
            && m.client_msg_id == self.client_msg_id
            && m.text == self.text
    }
}

/// Settles an early trigger with the outcome of its append.
struct EarlyTicket {
    rt: std::sync::Weak<BotRuntime>,
    id: u64,
}

impl SendTicket for EarlyTicket {
    fn settled(self: Box<Self>, stored: Option<&Message>) {
        let Some(rt) = self.rt.upgrade() else { return };
        match stored {
            Some(m) => {
                rt.claim(&Arc::new(m.clone()), Some(self.id));
            }
            None => rt.forget_early(self.id),
        }
    }
}

/// Usage of answers outside any channel (`ai_chatbot_replies`) is recorded under this channel id, with the
/// bot itself as the user.
const ANSWERS_CHANNEL: &str = "-";

#[async_trait::async_trait]
impl BotAnswerer for BotRuntime {
    async fn answer(
        &self,
        bot_id: &UserId,
        turns: Vec<(TurnRole, String)>,
    ) -> Result<mpsc::Receiver<AnswerEvent>, DomainError> {
        let known = self.bots.read().unwrap_or_else(|e| e.into_inner()).get(bot_id).cloned();
        let bot = match known {
            Some(bot) => bot,
            // Created a moment ago: the event that adds it here may not have been handled yet.
            None => self
                .service
                .lookup()
                .bot(bot_id)
                .await?
                .ok_or_else(|| DomainError::not_found("bot", bot_id))?,
        };
        if !bot.settings.answers_with_llm() {
            return Err(DomainError::invalid(
                "bot",
                "this bot has no LLM provider (its answers come from its callback)",
            ));
        }
        let turns: Vec<(confab_llm::Role, String)> = turns
            .into_iter()
            .map(|(r, t)| match r {
                TurnRole::User => (confab_llm::Role::User, t),
                TurnRole::Assistant => (confab_llm::Role::Assistant, t),
            })
            .collect();
        let req = context::build_turns_request(&bot.settings, &turns);
        let prompt_estimate = context::estimate_request(&req);
        if let Err(message) = self.check_budget(&bot, &bot.id, prompt_estimate + req.max_tokens).await {
            tracing::info!(bot = %bot.id, %message, "answer refused");
            return Err(DomainError::LimitExceeded {
                what: "daily tokens of this bot",
                limit: bot.settings.bot_daily_tokens.max(bot.settings.user_daily_tokens),
            });
        }
        let providers: Vec<Arc<dyn LlmProvider>> = std::iter::once(&bot.settings.provider)
            .chain(&bot.settings.fallbacks)
            .filter_map(|name| self.providers.get(name))
            .collect();
        if providers.is_empty() {
            return Err(DomainError::Unavailable("this bot's provider is not configured".into()));
        }
        let rt = self
            .me
            .upgrade()
            .ok_or_else(|| DomainError::Unavailable("the bot runtime is stopping".into()))?;
        let (tx, rx) = mpsc::channel(64);
        let prepared = Prepared {
            req,
            providers,
            prompt_estimate,
        };
        tokio::spawn(async move {
            let outcome = match rt.open(&bot, prepared, Instant::now()).await {
                Ok(opened) => rt.relay_answer(opened, &tx).await,
                Err(o) => o,
            };
            match &outcome.end {
                End::Failed(message) | End::Interrupted(message) => {
                    let _ = tx
                        .send(AnswerEvent::Failed {
                            busy: outcome.busy,
                            message: message.clone(),
                        })
                        .await;
                }
                End::Blocked(b) => {
                    let _ = tx
                        .send(AnswerEvent::Rejected {
                            rule: b.rule.clone(),
                            reason: b.reason.clone(),
                        })
                        .await;
                }
                End::Complete | End::Truncated | End::Stopped => {}
            }
            rt.record_answer(&bot, &outcome).await;
        });
        Ok(rx)
    }
}

impl BotRuntime {
    /// Streams an answer into `tx` until it ends, the receiver goes away (the caller left: the upstream call
    /// is closed) or the provider fails.
    async fn relay_answer(&self, opened: Opened<'_>, tx: &mpsc::Sender<AnswerEvent>) -> Outcome {
        let Opened {
            mut stream,
            _permits,
            called_at,
            prompt_estimate,
            max_tokens,
        } = opened;
        let mut cap = cap::ReplyCap::new(max_tokens, self.cfg.max_reply_bytes);
        let mut out = Outcome {
            text: String::new(),
            end: End::Complete,
            busy: false,
            called: true,
            prompt_tokens: prompt_estimate,
            completion_tokens: 0,
        };
        let mut usage_reported = false;
        let mut first_token = true;
        // The content policy applies as in channels; these answers belong to none.
        let mut guard = ChannelId::parse(ANSWERS_CHANNEL)
            .ok()
            .and_then(|c| self.service.reply_guard(&c));
        loop {
            match stream.next().await {
                Some(Ok(StreamEvent::Delta(mut d))) => {
                    if d.is_empty() {
                        continue;
                    }
                    if first_token {
                        first_token = false;
                        metrics::histogram!("confab_llm_time_to_first_token_seconds")
                            .record(called_at.elapsed().as_secs_f64());
                    }
                    if cap.take(&mut d) {
                        out.end = End::Truncated; // the answer ends with this piece
                    }
                    out.text.push_str(&d);
                    let released = match &mut guard {
                        None => d,
                        Some(g) => match g.push(&d) {
                            Ok(released) => released,
                            Err(blocked) => {
                                tracing::info!(rule = %blocked.rule, "bot answer blocked by moderation");
                                out.end = End::Blocked(blocked);
                                break;
                            }
                        },
                    };
                    if !released.is_empty() && tx.send(AnswerEvent::Delta(released)).await.is_err() {
                        out.end = End::Stopped;
                        break;
                    }
                    if matches!(out.end, End::Truncated) {
                        break;
                    }
                }
                Some(Ok(StreamEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                })) => {
                    usage_reported = true;
                    out.prompt_tokens = prompt_tokens;
                    out.completion_tokens = completion_tokens;
                    if cap.over_reported(completion_tokens) {
                        out.end = End::Truncated;
                        break;
                    }
                }
                Some(Ok(StreamEvent::Done { finish_reason })) => {
                    if cap::is_length(finish_reason.as_deref()) {
                        out.end = End::Truncated;
                    }
                    break;
                }
                Some(Err(e)) => {
                    metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                    out.end = failure(&e, out.text.is_empty());
                    out.busy = is_saturation(&e);
                    break;
                }
                None => {
                    out.end = failure(
                        &LlmError::StreamCut("the stream ended early".into()),
                        out.text.is_empty(),
                    );
                    break;
                }
            }
        }
        drop(stream);
        if let Some(g) = guard {
            let reviewed = g.finish();
            match reviewed.blocked {
                Some(blocked) => out.end = End::Blocked(blocked),
                // What was held back goes out (before any failure event), unless the caller left.
                None if !matches!(out.end, End::Stopped) && !reviewed.rest.is_empty() => {
                    let _ = tx.send(AnswerEvent::Delta(reviewed.rest)).await;
                }
                None => {}
            }
        }
        if !usage_reported {
            out.completion_tokens = context::estimate_tokens(&out.text);
        }
        metrics::histogram!("confab_llm_upstream_seconds").record(called_at.elapsed().as_secs_f64());
        out
    }

    /// Metrics and usage of an answer outside any channel.
    async fn record_answer(&self, bot: &Bot, outcome: &Outcome) {
        let state = match outcome.end {
            End::Complete | End::Truncated => ReplyState::Complete,
            End::Stopped => ReplyState::Stopped,
            End::Failed(_) | End::Blocked(_) => ReplyState::Failed,
            End::Interrupted(_) => ReplyState::Interrupted,
        };
        metrics::counter!("confab_bot_replies_total", "state" => state.as_str()).increment(1);
        if !outcome.called {
            return;
        }
        metrics::counter!("confab_llm_tokens_total", "kind" => "prompt").increment(outcome.prompt_tokens as u64);
        metrics::counter!("confab_llm_tokens_total", "kind" => "completion")
            .increment(outcome.completion_tokens as u64);
        let Ok(channel_id) = ChannelId::parse(ANSWERS_CHANNEL) else {
            return;
        };
        let usage = UsageRecord {
            day: utc_day(now_millis()),
            bot_id: bot.id.clone(),
            user_id: bot.id.clone(),
            channel_id,
            prompt_tokens: outcome.prompt_tokens as u64,
            completion_tokens: outcome.completion_tokens as u64,
            replies: 1,
        };
        if let Err(e) = self.service.record_usage(usage).await {
            tracing::warn!(error = %e, "cannot record usage");
        }
    }
}

impl SendObserver for BotRuntime {
    fn sent_by_application(&self, stored: &Message) {
        let sender_is_bot = stored.sender_id.as_ref().is_none_or(|s| self.is_bot(s));
        if sender_is_bot || stored.reply.is_some() || !stored.mentions.iter().any(|b| self.is_bot(b)) {
            return; // bots never trigger bots: no loops
        }
        if let Some(rt) = self.me.upgrade() {
            let m = Arc::new(stored.clone());
            tokio::spawn(async move { rt.invoked_by_application(m).await });
        }
    }

    fn sending(&self, draft: &NewMessage) -> Option<Box<dyn SendTicket>> {
        let (kind, bots) = self.early_bots(draft)?;
        let rt = self.me.upgrade()?;
        let id = self.next_early.fetch_add(1, Ordering::Relaxed);
        // What the model sees of the trigger until it is stored (id and seq are unknown yet).
        let trigger = Message {
            id: MessageId(0),
            channel_id: draft.channel_id.clone(),
            seq: ChannelSeq(0),
            sender_id: draft.sender_id.clone(),
            kind: draft.kind,
            text: draft.text.clone(),
            custom_type: draft.custom_type.clone(),
            data: draft.data.clone(),
            payload: None,
            mentions: draft.mentions.clone(),
            client_msg_id: draft.client_msg_id.clone(),
            parent_id: draft.parent_id,
            reply_count: 0,
            file: None,
            created_at: now_millis(),
            updated_at: now_millis(),
            edited: false,
            deleted: false,
            reply: None,
        };
        let mut waiting = Vec::with_capacity(bots.len());
        for bot in bots {
            let (tx, rx) = oneshot::channel();
            waiting.push(tx);
            let (rt, trigger) = (rt.clone(), trigger.clone());
            tokio::spawn(async move { rt.reply_early(bot, trigger, kind, rx, id).await });
        }
        self.early.lock().unwrap_or_else(|e| e.into_inner()).push(EarlyTrigger {
            id,
            channel: draft.channel_id.clone(),
            sender: draft.sender_id.clone()?,
            client_msg_id: draft.client_msg_id.clone(),
            text: draft.text.clone(),
            stored: None,
            waiting,
        });
        Some(Box::new(EarlyTicket {
            rt: self.me.clone(),
            id,
        }))
    }
}

/// What a reply needs for the upstream call.
struct Prepared {
    req: confab_llm::ChatRequest,
    providers: Vec<Arc<dyn LlmProvider>>,
    prompt_estimate: u32,
}

/// An open upstream stream and the concurrency permits it holds until it ends.
struct Opened<'a> {
    stream: confab_llm::EventStream,
    _permits: (SemaphorePermit<'a>, OwnedSemaphorePermit),
    called_at: Instant,
    prompt_estimate: u32,
    /// The bot's `max_output_tokens`, enforced locally too.
    max_tokens: u32,
}

enum End {
    Complete,
    /// Cut at its length limit (the bot's tokens or the byte cap, locally or by the provider): finished
    /// `complete` with the reason [`cap::LENGTH`].
    Truncated,
    Stopped,
    Failed(String),
    Interrupted(String),
    /// Cut by the content policy: finished `failed` with the moderation reason.
    Blocked(ReplyBlocked),
}

struct Outcome {
    text: String,
    end: End,
    /// Failed because the provider or the bot is saturated (rate limit, full queue, open circuit), not
    /// broken: worth retrying later.
    busy: bool,
    /// Whether the provider was called (usage is recorded only then).
    called: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl Outcome {
    fn failed(reason: &str) -> Outcome {
        Outcome {
            text: String::new(),
            end: End::Failed(reason.to_string()),
            busy: false,
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    fn stopped(text: String) -> Outcome {
        Outcome {
            text,
            end: End::Stopped,
            busy: false,
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::Limits;
    use confab_domain::bot::BotSettings;
    use confab_domain::model::NewUser;
    use confab_service::{Actor, ServiceConfig};

    fn user(id: &str, is_bot: bool) -> NewUser {
        NewUser {
            id: UserId::parse(id).unwrap(),
            nickname: id.into(),
            profile_url: String::new(),
            metadata: Default::default(),
            is_bot,
        }
    }

    /// A runtime over a real store, with users alice and mallory and a bot in a direct channel with alice.
    async fn runtime() -> (tempfile::TempDir, Arc<Confab>, Arc<BotRuntime>, ChannelId) {
        let dir = tempfile::tempdir().unwrap();
        let bus: confab_domain::ports::DynBus = Arc::new(confab_bus::LocalBus::default());
        let store = confab_store_sqlite::SqliteStore::open(
            confab_store_sqlite::SqliteConfig::new(dir.path().join("t.db")),
            bus.clone(),
        )
        .unwrap();
        let cfg = ServiceConfig {
            limits: Limits::default(),
            files_dir: dir.path().join("files"),
            max_upload_bytes: 1 << 20,
            uploads: Default::default(),
            session_ttl: None,
            moderation: Default::default(),
        };
        // A provider nobody listens on: early calls fail fast, which these tests do not look at.
        let mut provider = confab_llm::ProviderConfig::new("p", confab_llm::ProviderKind::OpenAiCompatible);
        provider.base_url = Some("http://127.0.0.1:9/v1".into());
        provider.model = Some("m".into());
        let catalog = Arc::new(Catalog::from_config(&[provider], Box::new(|_| None), None).unwrap());
        let service = Confab::builder(Arc::new(store), bus, "a-master-token-for-tests-0123456789", cfg)
            .provider_catalog(catalog.clone())
            .build()
            .unwrap();
        let rt = BotRuntime::start(service.clone(), catalog, RuntimeConfig::default())
            .await
            .unwrap();
        let settings = BotSettings {
            provider: "p".into(),
            ..BotSettings::default()
        };
        service
            .create_bot(&Actor::Admin, user("bot", true), settings)
            .await
            .unwrap();
        for u in ["alice", "mallory"] {
            service.create_user(&Actor::Admin, user(u, false)).await.unwrap();
        }
        let (alice, bot) = (UserId::parse("alice").unwrap(), UserId::parse("bot").unwrap());
        let (ch, _) = service.open_direct(&Actor::Admin, &alice, &bot).await.unwrap();
        // The runtime learns the channel from its creation event.
        for _ in 0..200 {
            if rt
                .channels
                .lock()
                .unwrap()
                .get(&ch.id)
                .is_some_and(|c| !c.bots.is_empty())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (dir, service, rt, ch.id)
    }

    fn draft(ch: &ChannelId, from: &str, client_id: Option<&str>) -> NewMessage {
        let mut m = NewMessage::text(ch.clone(), UserId::parse(from).unwrap(), "hello @bot");
        m.client_msg_id = client_id.map(String::from);
        m
    }

    fn msg(id: i64, sender: &str, text: &str, at: i64) -> Message {
        Message {
            id: MessageId(id),
            channel_id: ChannelId::parse("c").unwrap(),
            seq: ChannelSeq(id as u64),
            sender_id: Some(UserId::parse(sender).unwrap()),
            kind: confab_domain::model::MessageKind::Text,
            text: text.into(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: Vec::new(),
            client_msg_id: None,
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: at,
            updated_at: at,
            edited: false,
            deleted: false,
            reply: None,
        }
    }

    #[test]
    fn early_context_ends_at_the_trigger_whether_or_not_the_read_saw_it() {
        let texts = |v: &[Message]| v.iter().map(|m| m.text.clone()).collect::<Vec<_>>();
        let trigger = msg(0, "alice", "hi", 100);
        let before = vec![msg(1, "alice", "hi", 10), msg(2, "bot", "hello!", 20)];
        // Not seen: everything read, then the trigger; an earlier identical message stays.
        let c = early_context(before.clone(), &trigger, 20);
        assert_eq!(texts(&c), ["hi", "hello!", "hi"]);
        // Seen, with a later message after it: cut before the stored copy.
        let mut seen = before.clone();
        seen.push(msg(3, "alice", "hi", 101));
        seen.push(msg(4, "bob", "later", 102));
        assert_eq!(texts(&early_context(seen, &trigger, 20)), ["hi", "hello!", "hi"]);
        // The limit counts the trigger.
        assert_eq!(texts(&early_context(before, &trigger, 2)), ["hello!", "hi"]);
    }

    #[tokio::test]
    async fn early_starts_only_for_members_and_never_for_retries() {
        let (_dir, service, rt, ch) = runtime().await;
        // A member's new message starts early; a second send with the same client id while the first is
        // still pending does not.
        let first = rt.sending(&draft(&ch, "alice", Some("k1"))).expect("starts early");
        assert!(rt.sending(&draft(&ch, "alice", Some("k1"))).is_none(), "pending retry");
        first.settled(None);
        assert!(
            rt.early.lock().unwrap().is_empty(),
            "a failed append forgets the early trigger"
        );
        // A non-member never starts anything, whatever the text says.
        assert!(rt.sending(&draft(&ch, "mallory", None)).is_none());
        // A stored message: its retry (same client id) does not start early, a new one does.
        let alice = Actor::User(UserId::parse("alice").unwrap());
        let sent = service.send(&alice, draft(&ch, "alice", Some("k2"))).await.unwrap();
        assert!(!sent.duplicate);
        assert!(rt.sending(&draft(&ch, "alice", Some("k2"))).is_none(), "stored retry");
        let again = service.send(&alice, draft(&ch, "alice", Some("k2"))).await.unwrap();
        assert!(again.duplicate);
        assert!(rt.sending(&draft(&ch, "alice", Some("k3"))).is_some());
        // Messages of bots never start anything (no loops).
        assert!(rt.sending(&draft(&ch, "bot", None)).is_none());
    }

    #[test]
    fn text_mentions_need_a_word_boundary() {
        let b = UserId::parse("bot").unwrap();
        assert!(mentions_in_text("@bot hi", &b));
        assert!(mentions_in_text("hey @bot, hi", &b));
        assert!(mentions_in_text("hey @bot.", &b));
        assert!(!mentions_in_text("@bottle", &b));
        assert!(!mentions_in_text("mail@bot", &b));
        assert!(!mentions_in_text("@bot_2", &b));
        assert!(!mentions_in_text("no mention", &b));
    }

    #[test]
    fn groups_address_mentioned_bots_named_commands_and_bots_taking_every_message() {
        let id = |s: &str| UserId::parse(s).unwrap();
        let with = |trigger, summonable| BotSettings {
            trigger,
            summonable,
            ..BotSettings::default()
        };
        let settings: HashMap<UserId, BotSettings> = [
            (id("quiet"), with(BotTrigger::Mentions, false)),
            (id("chatty"), with(BotTrigger::AllMessages, false)),
            (id("private"), with(BotTrigger::MentionsAndCommands, false)),
            (id("outsider"), with(BotTrigger::Mentions, false)),
            (id("summonable"), with(BotTrigger::Mentions, true)),
        ]
        .into_iter()
        .collect();
        let members = [id("quiet"), id("chatty"), id("private")];
        let addressed = |kind, mentions: &[UserId], text: &str| -> Vec<String> {
            addressed_bots(kind, &members, |b| settings.get(b), mentions, text)
                .map(|b| b.as_str().to_string())
                .collect()
        };
        use ChannelKind::{Direct, Group};
        assert_eq!(addressed(Group, &[], "hello"), ["chatty"]);
        assert_eq!(addressed(Group, &[], "hi @quiet"), ["quiet", "chatty"]);
        assert_eq!(addressed(Group, &[id("quiet")], "hi"), ["quiet", "chatty"]);
        // A command addresses the bot it names (and bots in Sendbird's privacy mode take every command).
        assert_eq!(addressed(Group, &[], "/quiet help"), ["quiet", "chatty", "private"]);
        assert_eq!(addressed(Group, &[], "/help"), ["chatty", "private"]);
        assert_eq!(addressed(Group, &[], "/quietly"), ["chatty", "private"]);
        assert_eq!(addressed(Group, &[], "a/b"), ["chatty"]);
        assert_eq!(addressed(Direct, &[], "hello"), ["quiet", "chatty", "private"]);
        // Outside its channels a bot answers only when it is summonable, and only to the mention list.
        assert_eq!(addressed(Group, &[id("outsider")], "hi @outsider"), ["chatty"]);
        assert_eq!(addressed(Group, &[id("summonable")], "hi"), ["chatty", "summonable"]);
        assert_eq!(addressed(Group, &[], "hi @summonable /summonable"), ["chatty"]);
    }
}
