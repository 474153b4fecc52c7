//! Which bots a committed message triggers: the channels' bots (cached, kept current by events), the one rule
//! of who may make a bot speak (`addressed_bots`), the application's invocations, and the callback
//! announcements.

use super::*;

/// Tries at recording a message's bot callbacks while the store is unavailable.
const CALLBACK_ATTEMPTS: u32 = 5;

impl BotRuntime {
    pub(crate) async fn channel_bots(&self, channel: &ChannelId) -> Option<ChannelBots> {
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

    pub(crate) fn remember_channel(&self, channel: &ChannelId, entry: ChannelBots) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels.len() >= CHANNEL_CACHE_MAX {
            channels.clear(); // refilled on use
        }
        channels.insert(channel.clone(), entry);
    }

    /// A message to a bot in a 1:1 channel; in a group, what [`addressed_bots`] says, or a follow-up in a
    /// thread the bot started or was mentioned in, when the bot replies in threads.
    pub(crate) async fn triggered_bots(&self, m: &Message) -> Vec<Bot> {
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
    pub(crate) async fn invoked_by_application(self: Arc<Self>, m: Arc<Message>) {
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
        self.answer(bots.clone(), &m);
        self.announce(&bots, &m).await;
    }

    /// Announces a trigger to the application for the bots among `bots` that have a callback (after their
    /// replies started: recording it is a commit of its own, which no reply waits for).
    pub(crate) async fn announce(&self, bots: &[Bot], m: &Arc<Message>) {
        let callbacks: Vec<UserId> = bots
            .iter()
            .filter(|b| !b.settings.callback_url.is_empty())
            .map(|b| b.id.clone())
            .collect();
        // Recorded in the outbox, from where they are delivered; a store that is busy for a moment is tried
        // again, a little later each time.
        for attempt in 1..=CALLBACK_ATTEMPTS {
            match self.service.trigger_callbacks(callbacks.iter().cloned(), m).await {
                Ok(()) => break,
                Err(DomainError::Unavailable(e)) if attempt < CALLBACK_ATTEMPTS => {
                    tracing::warn!(message = %m.id, error = %e, "cannot record bot callbacks yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::error!(message = %m.id, error = %e, "cannot record the bot callbacks of a message");
                    break;
                }
            }
        }
    }

    /// Starts one reply per bot of `bots` that answers with an LLM to the trigger `m`.
    pub(crate) fn answer(self: &Arc<Self>, bots: Vec<Bot>, m: &Arc<Message>) {
        let bots: Vec<Bot> = bots.into_iter().filter(|b| b.settings.answers_with_llm()).collect();
        if !bots.is_empty() {
            self.remember_trigger(m);
        }
        for bot in bots {
            let span = reply_span(&bot, &m.channel_id, Some(m.id), false);
            tokio::spawn(self.clone().reply(bot, m.clone()).instrument(span));
        }
    }
}

/// Which channels have bot members, and what kind they are; filled on first use, kept current by events.
#[derive(Clone)]
pub(crate) struct ChannelBots {
    pub(crate) kind: ChannelKind,
    pub(crate) bots: Vec<UserId>,
    /// Every member, kept only for channels with bots (an early start must know the sender is a member).
    pub(crate) members: Arc<HashSet<UserId>>,
}

impl ChannelBots {
    pub(crate) fn new(kind: ChannelKind, members: Vec<UserId>, is_bot: impl Fn(&UserId) -> bool) -> Self {
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
pub(crate) struct RecentTriggers {
    pub(crate) current: HashSet<(UserId, String)>,
    pub(crate) previous: HashSet<(UserId, String)>,
    pub(crate) rotated_at: Option<Instant>,
}

impl RecentTriggers {
    pub(crate) fn insert(&mut self, key: (UserId, String)) {
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

    pub(crate) fn contains(&self, key: &(UserId, String)) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }
}

/// Who may make a bot speak, for a user's message (the one rule, before the commit and after it). A bot
/// answers where it is a member: every message of a 1:1 channel; in a group, the messages that mention it
/// (mention list or `@id` in the text), a command naming it (`/id ...`), every command for a bot in
/// Sendbird's privacy mode, every message for one that takes them all. Outside its channels, only a
/// summonable bot answers, and only to a mention in the mention list. `members` are the channel's bots;
/// `settings` knows every bot. Thread follow-ups are decided separately (they need the parent). What the
/// application may do beyond this is [`BotRuntime::invoked_by_application`].
pub(crate) fn addressed_bots<'a>(
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
pub(crate) fn mentions_in_text(text: &str, bot: &UserId) -> bool {
    let needle = format!("@{bot}");
    text.match_indices(&needle).any(|(i, _)| {
        let before_ok = i == 0 || !text[..i].ends_with(|c: char| c.is_ascii_alphanumeric());
        before_ok && ends_id(&text[i + needle.len()..])
    })
}

/// A command naming the bot: `/id` at the start of the text, not followed by more id characters.
pub(crate) fn commands(text: &str, bot: &UserId) -> bool {
    text.strip_prefix('/')
        .and_then(|t| t.strip_prefix(bot.as_str()))
        .is_some_and(ends_id)
}

/// Whether an id just before `after` ends there (no more id characters follow).
pub(crate) fn ends_id(after: &str) -> bool {
    !after.starts_with(|c: char| {
        c.is_ascii_alphanumeric()
            || c == '_'
            || c == '-'
            || c == '.' && after[1..].starts_with(|c: char| c.is_ascii_alphanumeric())
    })
}

pub(crate) fn settings_of<'a>(bots: &'a HashMap<UserId, Bot>, id: &UserId) -> Option<&'a BotSettings> {
    bots.get(id).map(|b| &b.settings)
}

/// How long client ids of triggers are remembered (at least; at most twice), and how many per generation.
pub(crate) const RECENT_TRIGGERS_WINDOW: Duration = Duration::from_secs(300);

pub(crate) const RECENT_TRIGGERS_MAX: usize = 100_000;

/// Channels whose bots are remembered; beyond this the cache starts over.
pub(crate) const CHANNEL_CACHE_MAX: usize = 100_000;
