//! The early start: a user's message that triggers bots, seen just before its append, opens the upstream
//! call while the message commits; the reply row is created only once the message is stored. An early
//! trigger is matched to its stored message by the sender's settled append or by the commit event,
//! whichever comes first, so the event path never starts it twice.

use super::*;

impl BotRuntime {
    /// The bots a message about to be stored triggers, when that can be decided without the store (the
    /// channel's bots are cached, and no thread parent must be read); `None` leaves it to the commit event.
    pub(crate) fn early_bots(&self, draft: &NewMessage) -> Option<(ChannelKind, Vec<Bot>)> {
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
    pub(crate) fn claim(&self, m: &Arc<Message>, ticket: Option<u64>) -> bool {
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
    pub(crate) fn remember_trigger(&self, m: &Message) {
        if let (Some(sender), Some(cid)) = (&m.sender_id, &m.client_msg_id) {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((sender.clone(), cid.clone()));
        }
    }

    /// Forgets an early trigger: its message was not stored (or the wait for it gave up).
    pub(crate) fn forget_early(&self, id: u64) {
        self.early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| e.id != id);
    }

    /// Handles one trigger seen before its commit: the context is read and the upstream call opened while
    /// the message commits; the reply row is created once the message is stored, and nothing of the reply
    /// is shown before. If the message is not stored, the upstream call is dropped (closed).
    pub(crate) async fn reply_early(
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
        let span = tracing::Span::current();
        span.record("trigger_id", trigger.id.0);
        span.record("reply_id", reply.id.0);
        let stop = self.track(&reply);
        let opened = match opened {
            Some(o) => o,
            None => tokio::select! {
                _ = stop.cancelled() => Err(Outcome::stopped()),
                o = &mut opening => o,
            },
        };
        self.write(&bot, &trigger, &reply, opened, &stop).await;
    }
}

/// How long an early reply waits for its trigger's commit before giving up (the commit event then starts
/// the reply the ordinary way).
pub(crate) const EARLY_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// The context of an early reply: the channel's latest messages as read while the trigger commits, then
/// the trigger as sent. The read may already see the trigger stored (and even messages after it): the
/// context then ends just before it.
pub(crate) fn early_context(mut history: Vec<Message>, trigger: &Message, limit: u32) -> Vec<Message> {
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

/// A message seen before its commit that triggers bots; their early replies wait for the stored message.
pub(crate) struct EarlyTrigger {
    pub(crate) id: u64,
    pub(crate) channel: ChannelId,
    pub(crate) sender: UserId,
    pub(crate) client_msg_id: Option<String>,
    pub(crate) text: String,
    /// Set when the sender's append returned before the commit event arrived.
    pub(crate) stored: Option<MessageId>,
    pub(crate) waiting: Vec<oneshot::Sender<Arc<Message>>>,
}

impl EarlyTrigger {
    pub(crate) fn matches(&self, m: &Message) -> bool {
        m.channel_id == self.channel
            && m.sender_id.as_ref() == Some(&self.sender)
            && m.client_msg_id == self.client_msg_id
            && m.text == self.text
    }
}

/// Settles an early trigger with the outcome of its append.
pub(crate) struct EarlyTicket {
    pub(crate) rt: std::sync::Weak<BotRuntime>,
    pub(crate) id: u64,
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

impl SendObserver for BotRuntime {
    fn sent_by_application(&self, stored: &Message) {
        let sender_is_bot = stored.sender_id.as_ref().is_none_or(|s| self.is_bot(s));
        if sender_is_bot || stored.reply.is_some() || !stored.mentions.iter().any(|b| self.is_bot(b)) {
            return; // bots never trigger bots: no loops
        }
        if let Some(rt) = self.me.upgrade() {
            let m = Arc::new(stored.clone());
            tokio::spawn(async move { rt.invoked_by_application(m).await }.in_current_span());
        }
    }

    fn sending(&self, draft: &NewMessage) -> Option<Box<dyn SendTicket>> {
        if !self.cfg.early_start {
            return None;
        }
        let (kind, bots) = self.early_bots(draft)?;
        let rt = self.me.upgrade()?;
        // Decided within the send's span: the replies are its children, in its trace.
        let trigger_span = tracing::debug_span!("bot.trigger", channel_id = %draft.channel_id, early = true,
            bots = bots.len());
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
            let span = trigger_span.in_scope(|| reply_span(&bot, &trigger.channel_id, None, true));
            tokio::spawn(async move { rt.reply_early(bot, trigger, kind, rx, id).await }.instrument(span));
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
