//! The bot runtime: watches committed messages, decides which bots they trigger, and streams each bot's
//! reply from its LLM provider into the channel as one message that ends in exactly one final state.
//!
//! Per trigger: the reply row is created at once (`generating`, which clients show as "thinking"), the
//! provider is called with the triggering channel's recent messages only, each delta is relayed to the
//! channel's members as it arrives (`message.delta`), the text is saved a few times a second, and the row is
//! finished `complete`, `stopped`, `failed` (with a reason) or `interrupted`. Stop requests cancel the upstream
//! stream (dropping it closes the HTTP connection).
//!
//! Here: starting and the event loop. `triggers`: which bots a message triggers; `early`: the early start;
//! `replies`: one reply from begin to its final state (the service's reply lifecycle); `stream`: the one
//! stream loop, into a reply or a stateless answer; `answers`: stateless answers.

pub mod cap;
pub mod catalog;
pub mod context;
pub mod moderator;

mod answers;
mod early;
mod replies;
mod stream;
mod triggers;

use early::*;
use replies::*;
use triggers::*;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use confab_domain::bot::{Bot, BotSettings, BotTrigger, UsageRecord, utc_day};
use confab_domain::model::{ChannelKind, HistoryQuery, HistoryRange, Message, NewMessage};
use confab_domain::ports::{Origin, Subscription};
use confab_domain::{ChannelId, ChannelSeq, DomainError, Event, MessageId, UserId, now_millis};
use confab_llm::{Fallback, LlmError, LlmProvider, StreamEvent};
use confab_service::bots::{AnswerEvent, BotAnswerer, SendObserver, SendTicket, TurnRole};
use confab_service::moderation::ReplyGuard;
use confab_service::replies::{ReplyEnd, ReplyWriter};
use confab_service::{Confab, TraceFollower};
use futures_util::{FutureExt, StreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use stream::ReplySink;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Opens the provider call while the trigger commits, when it can be decided from memory (`early`).
    pub early_start: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_replies: 64,
            queue_timeout: Duration::from_secs(30),
            save_interval: Duration::from_millis(250),
            user_triggers_per_minute: 20,
            max_reply_bytes: 64 * 1024,
            early_start: true,
        }
    }
}

pub use catalog::Catalog;

pub struct BotRuntime {
    service: Arc<Confab>,
    providers: Arc<Catalog>,
    cfg: RuntimeConfig,
    bots: RwLock<HashMap<UserId, Bot>>,
    channels: Mutex<HashMap<ChannelId, ChannelBots>>,
    active: Mutex<HashMap<MessageId, CancellationToken>>,
    global: Semaphore,
    per_bot: Mutex<HashMap<UserId, Arc<Semaphore>>>,
    slots: replies::SlotGauges,
    triggers: DefaultKeyedRateLimiter<UserId>,
    /// Triggers seen before their commit (see [`SendObserver`]); short-lived, so a small list.
    early: Mutex<Vec<EarlyTrigger>>,
    next_early: AtomicU64,
    recent: Mutex<RecentTriggers>,
    /// Continues the trace of each new message's send (see `Confab::send_span`).
    traces: TraceFollower,
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
            slots: replies::SlotGauges::new(),
            early: Mutex::new(Vec::new()),
            next_early: AtomicU64::new(1),
            recent: Mutex::default(),
            traces: service.follow_send_traces(),
            me: me.clone(),
        });
        rt.load_bots().await?;
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
    ///
    /// With several nodes, a message's triggers are decided only by the node that committed it
    /// ([`Origin::Local`]): so a trigger starts on one node, never on two, and it is the node whose early start
    /// (`early.rs`) may already be running it. Stop requests come from any node, since a stop asked on one
    /// node must reach the node generating the reply; the caches of bots and channels follow changes made on
    /// any node.
    fn wants(ev: &Event, origin: Origin) -> bool {
        match ev {
            Event::MessageCreated(_) => origin == Origin::Local,
            Event::ChannelCreated { .. }
            | Event::BotChanged(_)
            | Event::UserDeleted(_)
            | Event::MembersJoined { .. }
            | Event::MemberLeft { .. }
            | Event::ChannelDeleted { .. }
            | Event::ReplyStopRequested { .. }
            | Event::Resync => true,
            _ => false,
        }
    }

    /// Replaces the bots known with those of the store.
    async fn load_bots(&self) -> Result<(), DomainError> {
        let bots = self.service.lookup().bots().await?;
        *self.bots.write().unwrap_or_else(|e| e.into_inner()) = bots.into_iter().map(|b| (b.id.clone(), b)).collect();
        Ok(())
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
                // Taken for every new message, whatever becomes of it below (see `Confab::send_span`).
                let sent_in = self.service.send_span(self.traces, &m);
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
                // Decided off the event loop, so a burst of triggers never delays stops or other events; under
                // the send's span, when traced, so its replies (children of this one) join the send's trace.
                let span = match &sent_in {
                    Some(send) => tracing::debug_span!(parent: send, "bot.trigger", channel_id = %m.channel_id,
                        message_id = m.id.0, early = false, bots = tracing::field::Empty),
                    None => tracing::Span::none(),
                };
                let rt = self.clone();
                tokio::spawn(
                    async move {
                        let bots = rt.triggered_bots(&m).await;
                        tracing::Span::current().record("bots", bots.len());
                        if !claimed {
                            rt.answer(bots.clone(), &m);
                        }
                        rt.announce(&bots, &m).await;
                    }
                    .instrument(span),
                );
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
            // Changes of bots and members from other nodes may have been lost: what was cached is reloaded.
            Event::Resync => {
                if let Err(e) = self.load_bots().await {
                    tracing::warn!(error = %e, "cannot reload the bots after a resync");
                }
                self.channels.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            Event::ReplyStopRequested { message_id, .. } => {
                if let Some(t) = self.active.lock().unwrap_or_else(|e| e.into_inner()).get(&message_id) {
                    t.cancel();
                }
            }
            _ => {}
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
    fn triggers_come_from_this_node_only_while_stops_and_invalidations_come_from_any() {
        let created = Event::MessageCreated(Arc::new(msg(1, "alice", "hi @bot", 1)));
        assert!(BotRuntime::wants(&created, Origin::Local));
        assert!(!BotRuntime::wants(&created, Origin::Remote));
        let others = [
            Event::ReplyStopRequested {
                channel_id: ChannelId::parse("c").unwrap(),
                message_id: MessageId(2),
                by: None,
            },
            Event::BotChanged(UserId::parse("bot").unwrap()),
            Event::UserDeleted(UserId::parse("bot").unwrap()),
            Event::ChannelDeleted {
                channel_id: ChannelId::parse("c").unwrap(),
                members: Arc::from(Vec::new()),
            },
        ];
        for ev in &others {
            for origin in [Origin::Local, Origin::Remote] {
                assert!(BotRuntime::wants(ev, origin), "{} from {origin:?}", ev.name());
            }
        }
        assert!(
            BotRuntime::wants(&Event::Resync, Origin::Remote),
            "caches reload after lost events"
        );
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
