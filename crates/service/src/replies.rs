//! One lifecycle for every bot reply, whoever produces its text (the LLM bot runtime, or an application
//! streaming a bot message, Sendbird's `send_stream`): [`Confab::begin_reply`] stores it `generating` (one
//! per bot and trigger, under the rules of any new message); a [`ReplyWriter`] relays, saves and reviews its
//! text as it streams; [`ReplyWriter::finish`] records its usage and stores it in exactly one final state,
//! given as a [`ReplyEnd`], the one enum for how a reply ends. A reply is stopped through
//! [`Confab::stop_reply`]; one left `generating` by a crash is swept to `interrupted` on start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_domain::bot::{ReplyInfo, ReplyState, UsageRecord};
use confab_domain::model::{Appended, Message, NewMessage};
use confab_domain::ports::{DynBus, DynStore};
use confab_domain::{ChannelId, ChannelSeq, DomainError, DomainResult, Event, MessageId, UserId};

use crate::moderation::{ReplyBlocked, ReplyGuard};
use crate::{Actor, Confab, require_admin};

/// The reason a reply cut at its length limit is finished `complete` with.
pub const LENGTH_REASON: &str = "length";

/// How a reply ends; [`ReplyEnd::stored`] is the state and reason it is stored with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyEnd {
    Complete,
    /// Cut at its length limit (the bot's tokens or the byte cap, locally or by the provider): stored
    /// `complete` with the reason [`LENGTH_REASON`].
    Truncated,
    Stopped,
    /// Nothing came: stored `failed` with the reason.
    Failed(String),
    /// It broke off after some text: stored `interrupted` with the reason.
    Interrupted(String),
    /// Cut by the content policy: stored `failed` with the moderation reason.
    Blocked(ReplyBlocked),
}

impl ReplyEnd {
    pub fn stored(&self) -> (ReplyState, Option<String>) {
        match self {
            ReplyEnd::Complete => (ReplyState::Complete, None),
            ReplyEnd::Truncated => (ReplyState::Complete, Some(LENGTH_REASON.to_string())),
            ReplyEnd::Stopped => (ReplyState::Stopped, None),
            ReplyEnd::Failed(r) => (ReplyState::Failed, Some(r.clone())),
            ReplyEnd::Interrupted(r) => (ReplyState::Interrupted, Some(r.clone())),
            ReplyEnd::Blocked(b) => (ReplyState::Failed, Some(b.failure_reason())),
        }
    }
}

/// A reply in its final state, and how it ended (`Blocked` even when the producer ended it otherwise).
#[derive(Clone, Debug)]
pub struct FinishedReply {
    pub message: Message,
    pub end: ReplyEnd,
}

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
struct SettledReply {
    /// The text to store (masked, and cut before blocked text).
    text: String,
    /// Set when a block rule refused the reply: it must be finished `failed` with
    /// [`ReplyBlocked::failure_reason`].
    blocked: Option<ReplyBlocked>,
    /// Flag rules the final text matched.
    flagged_by: Vec<String>,
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
    async fn settle(mut self) -> SettledReply {
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

    /// The text relayed so far (masked; what members have).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ends the reply: reviews and stores the final text in its one final state (`end`, or `Blocked` when
    /// the content policy refused it, whatever `end` says), after recording the tokens it used (so once
    /// clients see the final state, its usage is readable). A reply already final stays as it was.
    #[tracing::instrument(level = "debug", name = "reply.finish", skip_all, fields(message_id = self.id.0, state, reason))]
    pub async fn finish(self, end: ReplyEnd, usage: Option<UsageRecord>) -> DomainResult<FinishedReply> {
        let (store, id) = (self.store.clone(), self.id);
        let settled = self.settle().await;
        let end = match settled.blocked {
            Some(b) => ReplyEnd::Blocked(b),
            None => end,
        };
        if let Some(u) = usage
            && let Err(e) = store.record_usage(u).await
        {
            tracing::warn!(reply = %id, error = %e, "cannot record usage");
        }
        let (state, reason) = end.stored();
        let span = tracing::Span::current();
        span.record("state", state.as_str());
        span.record("reason", reason.as_deref());
        metrics::counter!("confab_bot_replies_total", "state" => state.as_str()).increment(1);
        let message = store.finish_reply(id, settled.text, state, reason).await?;
        Ok(FinishedReply { message, end })
    }
}

impl Confab {
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
        // The reply's own `message.new` continues the trace of the span beginning it (a bot's reply).
        let traced = self.traces.register(&tracing::Span::current(), &draft);
        let res = crate::traces::appending(self.store.append_message(draft, preconditions)).await;
        self.traces.settle(traced, &res);
        res
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
}
