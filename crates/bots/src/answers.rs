//! Stateless answers (`ai_chatbot_replies`): a bot's answer to turns the application gives, streamed back
//! to the caller, with no channel and no stored message.

use super::*;

/// Usage of answers outside any channel (`ai_chatbot_replies`) is recorded under this channel id, with the
/// bot itself as the user.
pub(crate) const ANSWERS_CHANNEL: &str = "-";

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
        // The content policy applies as in channels; these answers belong to none.
        let guard = ChannelId::parse(ANSWERS_CHANNEL)
            .ok()
            .and_then(|c| rt.service.reply_guard(&c));
        tokio::spawn(async move {
            let mut sink = AnswerSink {
                tx,
                guard,
                text: String::new(),
            };
            let mut outcome = match rt.open(&bot, prepared, Instant::now()).await {
                // The caller leaving is the only stop (the sink refuses more).
                Ok(opened) => stream::relay(opened, &mut sink, &CancellationToken::new(), rt.cfg.max_reply_bytes).await,
                Err(o) => o,
            };
            let tx = sink.tx.clone();
            outcome.end = sink.settle(outcome.end).await;
            match &outcome.end {
                ReplyEnd::Failed(message) | ReplyEnd::Interrupted(message) => {
                    let _ = tx
                        .send(AnswerEvent::Failed {
                            busy: outcome.busy,
                            message: message.clone(),
                        })
                        .await;
                }
                ReplyEnd::Blocked(b) => {
                    let _ = tx
                        .send(AnswerEvent::Rejected {
                            rule: b.rule.clone(),
                            reason: b.reason.clone(),
                        })
                        .await;
                }
                ReplyEnd::Complete | ReplyEnd::Truncated | ReplyEnd::Stopped => {}
            }
            rt.record_answer(&bot, &outcome).await;
        });
        Ok(rx)
    }
}

impl BotRuntime {
    /// Metrics and usage of an answer outside any channel.
    async fn record_answer(&self, bot: &Bot, outcome: &Outcome) {
        let (state, _) = outcome.end.stored();
        metrics::counter!("confab_bot_replies_total", "state" => state.as_str()).increment(1);
        outcome.count_tokens();
        if !outcome.called {
            return;
        }
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

/// A stateless answer on its way to the caller, through the content policy.
struct AnswerSink {
    tx: mpsc::Sender<AnswerEvent>,
    guard: Option<ReplyGuard>,
    /// What the provider sent (before moderation).
    text: String,
}

impl ReplySink for AnswerSink {
    async fn push(&mut self, piece: &str) -> Result<(), ReplyEnd> {
        self.text.push_str(piece);
        let released = match &mut self.guard {
            None => piece.to_string(),
            Some(g) => g.push(piece).map_err(|blocked| {
                tracing::info!(rule = %blocked.rule, "bot answer blocked by moderation");
                ReplyEnd::Blocked(blocked)
            })?,
        };
        if !released.is_empty() && self.tx.send(AnswerEvent::Delta(released)).await.is_err() {
            return Err(ReplyEnd::Stopped); // the caller left
        }
        Ok(())
    }

    fn received_len(&self) -> usize {
        self.text.len()
    }

    fn text(&self) -> &str {
        &self.text
    }
}

impl AnswerSink {
    /// Reviews the complete answer: what the policy held back goes out (before any failure event), unless
    /// the caller left; a block only complete at the end ends the answer `Blocked`.
    async fn settle(self, end: ReplyEnd) -> ReplyEnd {
        let Some(g) = self.guard else {
            return end;
        };
        let reviewed = g.finish();
        match reviewed.blocked {
            Some(blocked) if !matches!(end, ReplyEnd::Blocked(_)) => ReplyEnd::Blocked(blocked),
            Some(_) => end,
            None => {
                if end != ReplyEnd::Stopped && !reviewed.rest.is_empty() {
                    let _ = self.tx.send(AnswerEvent::Delta(reviewed.rest)).await;
                }
                end
            }
        }
    }
}
