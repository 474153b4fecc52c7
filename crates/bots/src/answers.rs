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
