//! Anthropic Messages API adapter.

use std::time::Duration;

use eventsource_stream::Event;
use reqwest::header::ACCEPT;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::config::{ProviderConfig, ProviderKind};
use crate::http::{self, ApiKey, SseParser};
use crate::{ChatRequest, EventStream, LlmError, LlmProvider, Role, StreamEvent};

/// Default base URL of the `anthropic` kind.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`.
#[derive(Debug)]
pub struct AnthropicProvider {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    key: ApiKey,
    model: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

impl AnthropicProvider {
    /// Builds the adapter (no reliability layer) for an `anthropic` config.
    pub fn from_config(cfg: &ProviderConfig, api_key: Option<String>) -> Result<Self, LlmError> {
        Self::build(cfg, api_key, None)
    }

    pub(crate) fn build(
        cfg: &ProviderConfig,
        api_key: Option<String>,
        egress: Option<&confab_egress::EgressPolicy>,
    ) -> Result<Self, LlmError> {
        if cfg.kind != ProviderKind::Anthropic {
            return Err(cfg.err(format!("AnthropicProvider cannot serve kind {:?}", cfg.kind)));
        }
        let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_ANTHROPIC_BASE_URL);
        let url = http::join_path(
            http::parse_base_url("base_url", base).map_err(|e| cfg.err(e))?,
            &["v1", "messages"],
        );
        let key = ApiKey::new(api_key.ok_or_else(|| cfg.err("an API key is required (set api_key_env)"))?)
            .map_err(|e| cfg.err(e))?;
        Ok(AnthropicProvider {
            name: cfg.name.clone(),
            client: http::build_client(Duration::from_millis(cfg.connect_timeout_ms), egress)?,
            url,
            key,
            model: cfg.model.clone(),
        })
    }

    fn body<'a>(&'a self, req: &'a ChatRequest) -> Result<Body<'a>, LlmError> {
        let model = req
            .model
            .as_deref()
            .or(self.model.as_deref())
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                LlmError::Config(format!(
                    "provider {:?}: no model configured and none given in the request",
                    self.name
                ))
            })?;
        // Anthropic has no system role inside `messages`: everything system goes top-level.
        let system_parts: Vec<&str> = req
            .system
            .as_deref()
            .into_iter()
            .chain(
                req.messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str()),
            )
            .filter(|s| !s.is_empty())
            .collect();
        let system = (!system_parts.is_empty()).then(|| system_parts.join("\n\n"));
        let messages = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| WireMessage {
                role: m.role,
                content: &m.content,
            })
            .collect();
        Ok(Body {
            model,
            system,
            messages,
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            stream: true,
        })
    }
}

#[async_trait::async_trait]
impl LlmProvider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        let body = self.body(&req)?;
        // Until the response's head: connecting, sending, the provider's queue and prompt processing.
        let span = tracing::debug_span!("llm.request", otel.kind = "client", provider = %self.name,
            provider.kind = "anthropic", model = body.model, http.response.status_code = tracing::field::Empty);
        let resp = self
            .client
            .post(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .header("x-api-key", self.key.header_value(""))
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body)
            .send()
            .instrument(span.clone())
            .await
            .map_err(|e| http::map_send_error(e, Some(&self.key)))?;
        span.record("http.response.status_code", resp.status().as_u16());
        span.in_scope(|| tracing::debug!(provider = %self.name, status = resp.status().as_u16(), "messages response"));
        if !resp.status().is_success() {
            return Err(http::error_from_response(resp, Some(&self.key)).await);
        }
        Ok(http::sse_stream(resp, AnthropicParser::default()))
    }
}

/// `message_start` (input tokens), `content_block_delta` (`text_delta`), `message_delta`
/// (stop reason, output tokens), `message_stop` (terminal), `ping`, `error`.
/// Usage is reported once, just before `Done`.
#[derive(Default)]
pub(crate) struct AnthropicParser {
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    stop_reason: Option<String>,
}

fn tokens(v: &Value) -> Option<u32> {
    v.as_u64().map(|n| n.min(u32::MAX as u64) as u32)
}

impl SseParser for AnthropicParser {
    fn on_event(&mut self, ev: Event) -> Result<Vec<StreamEvent>, LlmError> {
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| LlmError::StreamCut(format!("malformed event from the provider: {e}")))?;
        let kind = v["type"].as_str().unwrap_or(ev.event.as_str());
        match kind {
            "message_start" => {
                let u = &v["message"]["usage"];
                let input = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
                    .iter()
                    .filter_map(|f| tokens(&u[*f]))
                    .fold(None, |acc: Option<u32>, n| Some(acc.unwrap_or(0).saturating_add(n)));
                self.input_tokens = input.or(self.input_tokens);
                self.output_tokens = tokens(&u["output_tokens"]).or(self.output_tokens);
                Ok(vec![])
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match (d["type"].as_str(), d["text"].as_str()) {
                    (Some("text_delta"), Some(text)) if !text.is_empty() => {
                        Ok(vec![StreamEvent::Delta(text.to_string())])
                    }
                    _ => Ok(vec![]), // thinking / tool-input deltas are not chat text
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                let u = &v["usage"];
                self.output_tokens = tokens(&u["output_tokens"]).or(self.output_tokens);
                self.input_tokens = tokens(&u["input_tokens"]).or(self.input_tokens);
                Ok(vec![])
            }
            "message_stop" => {
                let mut out = Vec::with_capacity(2);
                if self.input_tokens.is_some() || self.output_tokens.is_some() {
                    out.push(StreamEvent::Usage {
                        prompt_tokens: self.input_tokens.unwrap_or(0),
                        completion_tokens: self.output_tokens.unwrap_or(0),
                    });
                }
                out.push(StreamEvent::Done {
                    finish_reason: self.stop_reason.take(),
                });
                Ok(out)
            }
            "error" => {
                let e = &v["error"];
                let etype = e["type"].as_str().unwrap_or("error");
                let message = e["message"].as_str().unwrap_or("");
                Err(LlmError::StreamCut(format!(
                    "provider error event ({etype}): {}",
                    http::truncate(message, 300)
                )))
            }
            // ping, content_block_start, content_block_stop, future event types
            _ => Ok(vec![]),
        }
    }

    fn terminal_marker(&self) -> &'static str {
        "message_stop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, data: &str) -> Event {
        Event {
            event: name.into(),
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_anthropic_events() {
        let mut p = AnthropicParser::default();
        let evs = [
            ev(
                "message_start",
                r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            ev(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ev("ping", r#"{"type": "ping"}"#),
            ev(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            ev(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
            ),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let out: Vec<StreamEvent> = evs.into_iter().flat_map(|e| p.on_event(e).unwrap()).collect();
        assert_eq!(
            out,
            [
                StreamEvent::Delta("Hi".into()),
                StreamEvent::Delta("!".into()),
                StreamEvent::Usage {
                    prompt_tokens: 25,
                    completion_tokens: 15
                },
                StreamEvent::Done {
                    finish_reason: Some("end_turn".into())
                },
            ]
        );
    }

    #[test]
    fn error_event_is_an_error() {
        let mut p = AnthropicParser::default();
        let e = p
            .on_event(ev(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap_err();
        assert_eq!(
            e,
            LlmError::StreamCut("provider error event (overloaded_error): Overloaded".into())
        );
    }
}
