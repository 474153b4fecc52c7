//! The one stream loop of every answer a bot gives, into a [`ReplySink`]: a channel reply (the service's
//! `ReplyWriter`) or a caller waiting for a stateless answer.

use super::*;

/// Where the pieces of an answer go.
pub(crate) trait ReplySink {
    /// Takes the next piece; `Err` ends the answer there (the content policy blocked it, or its receiver
    /// left), and the upstream call is closed.
    async fn push(&mut self, piece: &str) -> Result<(), ReplyEnd>;
    /// Bytes received so far (before moderation).
    fn received_len(&self) -> usize;
    /// The text so far (for the token estimate when the provider reports none).
    fn text(&self) -> &str;
}

impl ReplySink for ReplyWriter {
    async fn push(&mut self, piece: &str) -> Result<(), ReplyEnd> {
        ReplyWriter::push(self, piece).await.map_err(ReplyEnd::Blocked)
    }

    fn received_len(&self) -> usize {
        ReplyWriter::received_len(self)
    }

    fn text(&self) -> &str {
        ReplyWriter::text(self)
    }
}

/// Relays the upstream stream into `sink` until it ends, is stopped, or the sink refuses more: the one stream
/// loop of every answer. Deltas that already arrived go out as one piece; the bot's token limit and the byte
/// cap are enforced locally; usage comes from the provider, or is estimated from the text.
pub(crate) async fn relay(
    opened: Opened<'_>,
    sink: &mut impl ReplySink,
    stop: &CancellationToken,
    max_reply_bytes: usize,
) -> Outcome {
    let span = opened.span.clone();
    let out = relay_stream(opened, sink, stop, max_reply_bytes)
        .instrument(span.clone())
        .await;
    span.record("prompt_tokens", out.prompt_tokens);
    span.record("completion_tokens", out.completion_tokens);
    span.record("end", out.end.stored().0.as_str());
    out
}

async fn relay_stream(
    opened: Opened<'_>,
    sink: &mut impl ReplySink,
    stop: &CancellationToken,
    max_reply_bytes: usize,
) -> Outcome {
    let Opened {
        mut stream,
        _permits,
        called_at,
        prompt_estimate,
        max_tokens,
        span: _,
    } = opened;
    let mut cap = cap::ReplyCap::new(max_tokens, max_reply_bytes);
    let mut out = Outcome {
        end: ReplyEnd::Complete,
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
                    out.end = ReplyEnd::Stopped;
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
                    let ttft = called_at.elapsed();
                    metrics::histogram!("confab_llm_time_to_first_token_seconds").record(ttft.as_secs_f64());
                    tracing::debug!(ttft_ms = ttft.as_millis() as u64, "first token");
                }
                let received = Instant::now();
                let full = cap.take(&mut d);
                if let Err(end) = sink.push(&d).await {
                    drop(stream); // the rest of the generation is not wanted: close the upstream connection
                    out.end = end;
                    break;
                }
                // Provider delta received → handed to the fan-out.
                metrics::histogram!("confab_bot_relay_seconds").record(received.elapsed().as_secs_f64());
                if full {
                    drop(stream); // at its length limit, whatever the provider would still send
                    out.end = ReplyEnd::Truncated;
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
                    out.end = ReplyEnd::Truncated;
                    break;
                }
            }
            Some(Ok(StreamEvent::Done { finish_reason })) => {
                out.end = if cap::is_length(finish_reason.as_deref()) {
                    ReplyEnd::Truncated
                } else {
                    ReplyEnd::Complete
                };
                break;
            }
            Some(Err(e)) => {
                metrics::counter!("confab_llm_errors_total", "kind" => error_kind(&e)).increment(1);
                out.end = failure(&e, sink.received_len() == 0);
                out.busy = is_saturation(&e);
                break;
            }
            None => {
                out.end = failure(
                    &LlmError::StreamCut("the stream ended early".into()),
                    sink.received_len() == 0,
                );
                break;
            }
        }
    }
    if !usage_reported {
        out.completion_tokens = context::estimate_tokens(sink.text());
    }
    metrics::histogram!("confab_llm_upstream_seconds").record(called_at.elapsed().as_secs_f64());
    out
}
