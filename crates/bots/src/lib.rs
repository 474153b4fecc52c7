//! The bot runtime: watches committed messages, decides which bots they trigger, and streams each bot's
//! reply from its LLM provider into the channel as one message that ends in exactly one final state.
//!
//! Per trigger: the reply row is created at once (`generating`, which clients show as "thinking"), the
//! provider is called with the triggering channel's recent messages only, each delta is relayed to the
//! channel's members as it arrives (`message.delta`), the text is saved a few times a second, and the row is
//! finished `complete`, `stopped`, `failed` (with a reason) or `interrupted`. Stop requests cancel the upstream
//! stream (dropping it closes the HTTP connection).

pub mod catalog;
pub mod context;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use confab_domain::bot::{Bot, ReplyInfo, ReplyState, UsageRecord, utc_day};
use confab_domain::model::{ChannelKind, HistoryQuery, HistoryRange, Message, NewMessage};
use confab_domain::{ChannelId, ChannelSeq, DomainError, Event, MessageId, UserId, now_millis};
use confab_llm::{Fallback, LlmError, LlmProvider, StreamEvent};
use confab_service::Confab;
use futures_util::{FutureExt, StreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_replies: 64,
            queue_timeout: Duration::from_secs(30),
            save_interval: Duration::from_millis(250),
            user_triggers_per_minute: 20,
        }
    }
}

pub use catalog::Catalog;

/// Which channels have bot members, and what kind they are; filled on first use, kept current by events.
#[derive(Clone)]
struct ChannelBots {
    kind: ChannelKind,
    bots: Vec<UserId>,
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
}

impl BotRuntime {
    /// Loads the bots and starts watching the event stream.
    pub async fn start(
        service: Arc<Confab>,
        providers: Arc<Catalog>,
        cfg: RuntimeConfig,
    ) -> Result<Arc<BotRuntime>, DomainError> {
        let per_min = NonZeroU32::new(cfg.user_triggers_per_minute.max(1)).expect("max(1)");
        let rt = Arc::new(BotRuntime {
            global: Semaphore::new(cfg.max_concurrent_replies.max(1)),
            triggers: RateLimiter::keyed(Quota::per_minute(per_min)),
            service: service.clone(),
            providers,
            cfg,
            bots: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            per_bot: Mutex::new(HashMap::new()),
        });
        for bot in service.store().list_bots().await? {
            rt.bots
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(bot.id.clone(), bot);
        }
        let mut events = service.bus().subscribe();
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(rt) = weak.upgrade() else { break };
                rt.on_event(ev).await;
            }
        });
        Ok(rt)
    }

    /// Replies being generated right now.
    pub fn active_replies(&self) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).len()
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
                // Most messages go to channels without bots: settle those here, without a task per message.
                let no_bots = self.bots.read().unwrap_or_else(|e| e.into_inner()).is_empty()
                    || self
                        .channels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&m.channel_id)
                        .is_some_and(|c| c.bots.is_empty());
                if no_bots {
                    return;
                }
                // Decided off the event loop, so a burst of triggers never delays stops or other events.
                let rt = self.clone();
                tokio::spawn(async move {
                    for bot in rt.triggered_bots(&m).await {
                        let rt = rt.clone();
                        let trigger = m.clone();
                        tokio::spawn(async move { rt.reply(bot, trigger).await });
                    }
                });
            }
            Event::BotChanged(id) => match self.service.store().get_bot(&id).await {
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
        let store = self.service.store();
        let ch = store.get_channel(channel).await.ok()??;
        let members = store.member_ids(channel).await.ok()?;
        let bots: Vec<UserId> = members.into_iter().filter(|m| self.is_bot(m)).collect();
        let entry = ChannelBots { kind: ch.kind, bots };
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone(), entry.clone());
        Some(entry)
    }

    /// A message to a bot in a 1:1 channel; in a group, a mention (mention list or `@id` in the text), or a
    /// follow-up in a thread the bot started or was mentioned in, when the bot replies in threads.
    async fn triggered_bots(&self, m: &Message) -> Vec<Bot> {
        let Some(ch) = self.channel_bots(&m.channel_id).await else {
            return Vec::new();
        };
        if ch.bots.is_empty() {
            return Vec::new();
        }
        let mut ids: Vec<UserId> = match ch.kind {
            ChannelKind::Direct => ch.bots.clone(),
            ChannelKind::Group => ch
                .bots
                .iter()
                .filter(|b| m.mentions.contains(b) || mentions_in_text(&m.text, b))
                .cloned()
                .collect(),
        };
        if ids.is_empty()
            && ch.kind == ChannelKind::Group
            && let Some(parent_id) = m.parent_id
            && let Ok(Some(parent)) = self.service.store().get_message(parent_id).await
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

    fn bot_semaphore(&self, bot: &Bot) -> Arc<Semaphore> {
        self.per_bot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bot.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(bot.settings.max_concurrent.max(1) as usize)))
            .clone()
    }

    /// Handles one trigger from start to its one final state.
    async fn reply(self: Arc<Self>, bot: Bot, trigger: Arc<Message>) {
        let triggered_at = Instant::now();
        let store = self.service.store().clone();
        let mut draft = NewMessage::text(trigger.channel_id.clone(), bot.id.clone(), String::new());
        draft.reply = Some(ReplyInfo {
            state: ReplyState::Generating,
            trigger_id: trigger.id,
            reason: None,
        });
        draft.parent_id = trigger.parent_id;
        let created = match store.append_message(draft).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(bot = %bot.id, trigger = %trigger.id, error = %e, "cannot create the reply");
                return;
            }
        };
        if created.duplicate {
            return; // this trigger already has its reply (one per bot and trigger)
        }
        let reply = created.message;
        let token = CancellationToken::new();
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reply.id, token.clone());
        let outcome = self.generate(&bot, &trigger, &reply, token, triggered_at).await;
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&reply.id);
        let (state, reason) = match &outcome.end {
            End::Complete => (ReplyState::Complete, None),
            End::Stopped => (ReplyState::Stopped, None),
            End::Failed(r) => (ReplyState::Failed, Some(r.clone())),
            End::Interrupted(r) => (ReplyState::Interrupted, Some(r.clone())),
        };
        metrics::counter!("confab_bot_replies_total", "state" => state.as_str()).increment(1);
        if outcome.called {
            metrics::counter!("confab_llm_tokens_total", "kind" => "prompt").increment(outcome.prompt_tokens as u64);
            metrics::counter!("confab_llm_tokens_total", "kind" => "completion")
                .increment(outcome.completion_tokens as u64);
        }
        // Usage first: once clients see the final state, the usage of the reply is readable.
        if let (Some(user), true) = (&trigger.sender_id, outcome.called) {
            let usage = UsageRecord {
                day: utc_day(now_millis()),
                bot_id: bot.id.clone(),
                user_id: user.clone(),
                channel_id: trigger.channel_id.clone(),
                prompt_tokens: outcome.prompt_tokens as u64,
                completion_tokens: outcome.completion_tokens as u64,
                replies: 1,
            };
            if let Err(e) = store.record_usage(usage).await {
                tracing::warn!(error = %e, "cannot record usage");
            }
        }
        if let Err(e) = store.finish_reply(reply.id, outcome.text.clone(), state, reason).await {
            tracing::error!(reply = %reply.id, error = %e, "cannot finish the reply; the restart sweep will");
        }
    }

    async fn generate(
        &self,
        bot: &Bot,
        trigger: &Message,
        reply: &Message,
        stop: CancellationToken,
        triggered_at: Instant,
    ) -> Outcome {
        let store = self.service.store();
        let s = &bot.settings;
        let Some(user) = trigger.sender_id.clone() else {
            return Outcome::failed("no sender");
        };
        if self.triggers.check_key(&user).is_err() {
            return Outcome::failed("Too many requests to bots; wait a minute and try again.");
        }
        // Context: the triggering channel only, up to the trigger.
        let history = match store
            .history(HistoryQuery {
                channel_id: trigger.channel_id.clone(),
                range: HistoryRange::Before(ChannelSeq(trigger.seq.0 + 1)),
                limit: s.context_messages.max(1),
            })
            .await
        {
            Ok(h) => h,
            Err(e) => return Outcome::failed(&format!("could not read the conversation: {}", short(&e))),
        };
        let kind = self
            .channel_bots(&trigger.channel_id)
            .await
            .map(|c| c.kind)
            .unwrap_or(ChannelKind::Group);
        let req = context::build_request(&bot.id, s, kind, &history);
        let estimate = context::estimate_request(&req) + req.max_tokens;
        if let Err(msg) = self.check_budget(bot, &user, estimate).await {
            return Outcome::failed(&msg);
        }
        let providers: Vec<Arc<dyn LlmProvider>> = std::iter::once(&s.provider)
            .chain(&s.fallbacks)
            .filter_map(|name| self.providers.get(name))
            .collect();
        if providers.is_empty() {
            return Outcome::failed("This bot's provider is not configured.");
        }
        // Concurrency: global and per bot, each with a deadline.
        let bot_sem = self.bot_semaphore(bot);
        let deadline = self.cfg.queue_timeout;
        let permits = tokio::select! {
            _ = stop.cancelled() => return Outcome::stopped(String::new()),
            p = tokio::time::timeout(deadline, async {
                let a = self.global.acquire().await;
                let b = bot_sem.acquire().await;
                (a, b)
            }) => p,
        };
        let _permits = match permits {
            Ok((Ok(a), Ok(b))) => (a, b),
            _ => return Outcome::failed("The bot is busy right now; try again shortly."),
        };
        let prompt_estimate = context::estimate_request(&req);
        let chain = Fallback::new(providers);
        let mut out = Outcome {
            text: String::new(),
            end: End::Complete,
            called: true,
            prompt_tokens: prompt_estimate,
            completion_tokens: 0,
        };
        let mut usage_reported = false;
        // The server's own work before the upstream call: trigger handling, reply row, context, checks.
        metrics::histogram!("confab_bot_overhead_seconds").record(triggered_at.elapsed().as_secs_f64());
        let called_at = Instant::now();
        let mut first_token = true;
        let mut stream = tokio::select! {
            _ = stop.cancelled() => return Outcome { end: End::Stopped, ..out },
            r = chain.stream(req) => match r {
                Ok(s) => s,
                Err(e) => {
                    metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                    return Outcome { end: End::Failed(e.user_message()), ..out };
                }
            },
        };
        let mut last_save = Instant::now();
        let mut saved_len = 0;
        // At most one save in flight, off the relay path: relaying never waits for the disk, and saves of one
        // reply cannot overtake each other.
        let mut saving: Option<tokio::task::JoinHandle<()>> = None;
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
                    let offset = out.text.len() as u64;
                    out.text.push_str(&d);
                    self.service
                        .bus()
                        .publish(vec![Event::ReplyDelta {
                            channel_id: reply.channel_id.clone(),
                            message_id: reply.id,
                            seq: reply.seq,
                            offset,
                            delta: Arc::from(d.as_str()),
                        }])
                        .await;
                    // Provider delta received → handed to the fan-out.
                    metrics::histogram!("confab_bot_relay_seconds").record(received.elapsed().as_secs_f64());
                    let idle = saving.as_ref().is_none_or(|h| h.is_finished());
                    if idle && last_save.elapsed() >= self.cfg.save_interval && out.text.len() > saved_len {
                        last_save = Instant::now();
                        saved_len = out.text.len();
                        let (store, id, text) = (store.clone(), reply.id, out.text.clone());
                        saving = Some(tokio::spawn(async move {
                            if let Err(e) = store.save_reply_text(id, text).await {
                                tracing::warn!(reply = %id, error = %e, "cannot save reply text");
                            }
                        }));
                    }
                }
                Some(Ok(StreamEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                })) => {
                    usage_reported = true;
                    out.prompt_tokens = prompt_tokens;
                    out.completion_tokens = completion_tokens;
                }
                Some(Ok(StreamEvent::Done { .. })) => {
                    out.end = End::Complete;
                    break;
                }
                Some(Err(e)) => {
                    metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                    out.end = failure(&e, &out.text);
                    break;
                }
                None => {
                    out.end = failure(&LlmError::StreamCut("the stream ended early".into()), &out.text);
                    break;
                }
            }
        }
        if let Some(h) = saving {
            // The final write must come after the last partial one.
            let _ = h.await;
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
            .store()
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

/// An error before any text is a failure; after some text, the reply was interrupted.
fn failure(e: &LlmError, text: &str) -> End {
    if text.is_empty() {
        End::Failed(e.user_message())
    } else {
        End::Interrupted(e.user_message())
    }
}

/// `@id` in the text, not followed by more id characters.
fn mentions_in_text(text: &str, bot: &UserId) -> bool {
    let needle = format!("@{bot}");
    text.match_indices(&needle).any(|(i, _)| {
        let before_ok = i == 0 || !text[..i].ends_with(|c: char| c.is_ascii_alphanumeric());
        let after = &text[i + needle.len()..];
        before_ok
            && !after.starts_with(|c: char| {
                c.is_ascii_alphanumeric()
                    || c == '_'
                    || c == '-'
                    || c == '.' && after[1..].starts_with(|c: char| c.is_ascii_alphanumeric())
            })
    })
}

enum End {
    Complete,
    Stopped,
    Failed(String),
    Interrupted(String),
}

struct Outcome {
    text: String,
    end: End,
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
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    fn stopped(text: String) -> Outcome {
        Outcome {
            text,
            end: End::Stopped,
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
