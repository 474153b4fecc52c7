//! One reply to a trigger: begun through the service (one per bot and trigger), checked (trigger rate,
//! budgets, concurrency), relayed from the provider's stream through the service's reply writer, and
//! finished through the service in exactly one final state with its usage.

use super::*;

impl BotRuntime {
    /// Handles one trigger after its commit, from start to its one final state.
    pub(crate) async fn reply(self: Arc<Self>, bot: Bot, trigger: Arc<Message>) {
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
        tracing::Span::current().record("reply_id", reply.id.0);
        let stop = self.track(&reply);
        let kind = self
            .channel_bots(&trigger.channel_id)
            .await
            .map(|c| c.kind)
            .unwrap_or(ChannelKind::Group);
        let opened = match self.prepare(&bot, &trigger, kind, history).await {
            Ok(p) => tokio::select! {
                _ = stop.cancelled() => Err(Outcome::stopped()),
                o = self.open(&bot, p, triggered_at) => o,
            },
            Err(o) => Err(o),
        };
        self.write(&bot, &trigger, &reply, opened, &stop).await;
    }

    /// Creates the reply row (`generating`); `None` when it exists already (one per bot and trigger) or
    /// cannot be stored.
    pub(crate) async fn create_reply(&self, bot: &Bot, trigger: &Message) -> Option<Message> {
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
    pub(crate) fn track(&self, reply: &Message) -> CancellationToken {
        let token = CancellationToken::new();
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reply.id, token.clone());
        token
    }

    /// Streams the opened call (or the refusal before it) into the reply, then records usage and stores the
    /// reply's one final state: the one path of every reply the runtime writes.
    pub(crate) async fn write(
        &self,
        bot: &Bot,
        trigger: &Message,
        reply: &Message,
        opened: Result<Opened<'_>, Outcome>,
        stop: &CancellationToken,
    ) {
        let mut writer = self.service.reply_writer(reply, self.cfg.save_interval);
        let outcome = match opened {
            Ok(opened) => stream::relay(opened, &mut writer, stop, self.cfg.max_reply_bytes).await,
            Err(o) => o,
        };
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&reply.id);
        outcome.count_tokens();
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
        if let Err(e) = writer.finish(outcome.end, usage).await {
            tracing::error!(reply = %reply.id, error = %e, "cannot finish the reply; the restart sweep will");
        }
    }

    /// Checks and context before the call: the user's trigger rate, the request from `history` (the
    /// triggering channel's recent messages, ending with the trigger), the token budgets, the providers.
    pub(crate) async fn prepare(
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
    pub(crate) async fn open(&self, bot: &Bot, p: Prepared, triggered_at: Instant) -> Result<Opened<'_>, Outcome> {
        let bot_sem = self.bot_semaphore(bot);
        let waiting = Slot::enter(&self.slots.waiting);
        let permits = tokio::time::timeout(self.cfg.queue_timeout, async {
            let a = self.global.acquire().await;
            let b = bot_sem.acquire_owned().await;
            (a, b)
        })
        .await;
        drop(waiting);
        let permits = match permits {
            Ok((Ok(a), Ok(b))) => (a, b, Slot::enter(&self.slots.in_flight)),
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
        // The provider call, from here to the end of its stream (`stream::relay`).
        let span = tracing::debug_span!("llm.call", otel.kind = "client", bot_id = %bot.id,
            provider = tracing::field::Empty, model = p.req.model.as_deref(), max_tokens,
            prompt_tokens = tracing::field::Empty, completion_tokens = tracing::field::Empty,
            end = tracing::field::Empty, error = tracing::field::Empty, otel.status_code = tracing::field::Empty);
        match Fallback::new(p.providers)
            .stream_with_provider(p.req)
            .instrument(span.clone())
            .await
        {
            Ok((provider, stream)) => {
                span.record("provider", provider.as_str());
                Ok(Opened {
                    stream,
                    _permits: permits,
                    called_at,
                    prompt_estimate: p.prompt_estimate,
                    max_tokens,
                    span,
                })
            }
            Err(e) => {
                span.record("error", error_kind(&e));
                span.record("otel.status_code", "error");
                metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                Err(Outcome {
                    end: ReplyEnd::Failed(e.user_message()),
                    busy: is_saturation(&e),
                    called: true,
                    prompt_tokens: p.prompt_estimate,
                    completion_tokens: 0,
                })
            }
        }
    }

    /// Checks the day's usage against the bot's per-user and per-bot budgets, with this call's estimate.
    pub(crate) async fn check_budget(&self, bot: &Bot, user: &UserId, estimate: u32) -> Result<(), String> {
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

/// The span of one reply, from its trigger to its final state (under the trigger's span: the send's when the
/// reply starts early, else `bot.trigger`).
pub(crate) fn reply_span(bot: &Bot, channel: &ChannelId, trigger: Option<MessageId>, early: bool) -> tracing::Span {
    tracing::debug_span!("bot.reply", bot_id = %bot.id, channel_id = %channel, trigger_id = trigger.map(|t| t.0),
        early, reply_id = tracing::field::Empty)
}

/// Whether an error says the provider is saturated rather than broken.
pub(crate) fn is_saturation(e: &LlmError) -> bool {
    matches!(
        e,
        LlmError::RateLimited { .. } | LlmError::Overloaded | LlmError::CircuitOpen { .. }
    )
}

/// An error before any text is a failure; after some text, the reply was interrupted.
pub(crate) fn failure(e: &LlmError, nothing_received: bool) -> ReplyEnd {
    if nothing_received {
        ReplyEnd::Failed(e.user_message())
    } else {
        ReplyEnd::Interrupted(e.user_message())
    }
}

/// What a reply needs for the upstream call.
pub(crate) struct Prepared {
    pub(crate) req: confab_llm::ChatRequest,
    pub(crate) providers: Vec<Arc<dyn LlmProvider>>,
    pub(crate) prompt_estimate: u32,
}

/// `confab_bot_replies_waiting` (replies and answers waiting for a concurrency slot, global or the bot's) and
/// `confab_bot_replies_in_flight` (those holding both: their upstream call opening or streaming). Made once,
/// when the runtime starts, so both show from the start.
pub(crate) struct SlotGauges {
    waiting: metrics::Gauge,
    in_flight: metrics::Gauge,
}

impl SlotGauges {
    pub(crate) fn new() -> SlotGauges {
        SlotGauges {
            waiting: metrics::gauge!("confab_bot_replies_waiting"),
            in_flight: metrics::gauge!("confab_bot_replies_in_flight"),
        }
    }
}

/// One reply counted in a gauge until dropped (also when its task is cancelled while it waits).
pub(crate) struct Slot<'a>(&'a metrics::Gauge);

impl<'a> Slot<'a> {
    fn enter(gauge: &'a metrics::Gauge) -> Slot<'a> {
        gauge.increment(1.0);
        Slot(gauge)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// An open upstream stream and the concurrency permits it holds until it ends.
pub(crate) struct Opened<'a> {
    pub(crate) stream: confab_llm::EventStream,
    pub(crate) _permits: (SemaphorePermit<'a>, OwnedSemaphorePermit, Slot<'a>),
    pub(crate) called_at: Instant,
    pub(crate) prompt_estimate: u32,
    /// The bot's `max_output_tokens`, enforced locally too.
    pub(crate) max_tokens: u32,
    /// `llm.call`, which the stream loop continues.
    pub(crate) span: tracing::Span,
}

/// How an answer went: its end, and what it cost.
pub(crate) struct Outcome {
    pub(crate) end: ReplyEnd,
    /// Failed because the provider or the bot is saturated (rate limit, full queue, open circuit), not
    /// broken: worth retrying later.
    pub(crate) busy: bool,
    /// Whether the provider was called (usage is recorded only then).
    pub(crate) called: bool,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

impl Outcome {
    pub(crate) fn failed(reason: &str) -> Outcome {
        Outcome {
            end: ReplyEnd::Failed(reason.to_string()),
            busy: false,
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    pub(crate) fn stopped() -> Outcome {
        Outcome {
            end: ReplyEnd::Stopped,
            busy: false,
            called: false,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    /// Counts the tokens of a provider call.
    pub(crate) fn count_tokens(&self) {
        if self.called {
            metrics::counter!("confab_llm_tokens_total", "kind" => "prompt").increment(self.prompt_tokens as u64);
            metrics::counter!("confab_llm_tokens_total", "kind" => "completion")
                .increment(self.completion_tokens as u64);
        }
    }
}
