//! OpenAI Chat Completions (also OpenAI-compatible servers) and Azure OpenAI adapters.

use std::time::Duration;

use eventsource_stream::Event;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::{ProviderConfig, ProviderKind, TokenLimitParam};
use crate::http::{self, ApiKey, SseParser};
use crate::{ChatRequest, EventStream, LlmError, LlmProvider, Role, StreamEvent};

/// Default base URL of the `openai` kind.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug, Clone, Copy)]
enum Auth {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `api-key: <key>` (Azure)
    ApiKeyHeader,
}

/// The shared Chat Completions client of both adapters.
#[derive(Debug)]
struct ChatCompletions {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<ApiKey>,
    auth: Auth,
    model: Option<String>,
    model_required: bool,
    token_param: TokenLimitParam,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl ChatCompletions {
    fn body<'a>(&'a self, req: &'a ChatRequest) -> Result<Body<'a>, LlmError> {
        let model = req.model.as_deref().or(self.model.as_deref()).filter(|m| !m.is_empty());
        if model.is_none() && self.model_required {
            return Err(LlmError::Config(format!(
                "provider {:?}: no model configured and none given in the request",
                self.name
            )));
        }
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        if let Some(system) = req.system.as_deref() {
            messages.push(WireMessage {
                role: Role::System,
                content: system,
            });
        }
        messages.extend(req.messages.iter().map(|m| WireMessage {
            role: m.role,
            content: &m.content,
        }));
        let (max_tokens, max_completion_tokens) = match self.token_param {
            TokenLimitParam::MaxTokens => (Some(req.max_tokens), None),
            TokenLimitParam::MaxCompletionTokens => (None, Some(req.max_tokens)),
        };
        Ok(Body {
            model,
            messages,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            temperature: req.temperature,
            max_tokens,
            max_completion_tokens,
        })
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        let body = self.body(&req)?;
        let mut rb = self
            .client
            .post(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.key {
            rb = match self.auth {
                Auth::Bearer => rb.header(AUTHORIZATION, key.header_value("Bearer ")),
                Auth::ApiKeyHeader => rb.header("api-key", key.header_value("")),
            };
        }
        // Until the response's head: connecting, sending, the provider's queue and prompt processing.
        let kind = match self.auth {
            Auth::Bearer => "openai",
            Auth::ApiKeyHeader => "azure_openai",
        };
        let span = tracing::debug_span!("llm.request", otel.kind = "client", provider = %self.name,
            provider.kind = kind, model = body.model, http.response.status_code = tracing::field::Empty);
        let resp = rb
            .send()
            .instrument(span.clone())
            .await
            .map_err(|e| http::map_send_error(e, self.key.as_ref()))?;
        span.record("http.response.status_code", resp.status().as_u16());
        span.in_scope(|| {
            tracing::debug!(provider = %self.name, status = resp.status().as_u16(), "chat completions response");
        });
        if !resp.status().is_success() {
            return Err(http::error_from_response(resp, self.key.as_ref()).await);
        }
        Ok(http::sse_stream(resp, OpenAiParser::default()))
    }
}

fn connect_timeout(cfg: &ProviderConfig) -> Duration {
    Duration::from_millis(cfg.connect_timeout_ms)
}

/// OpenAI Chat Completions: `POST {base_url}/chat/completions` with `Authorization: Bearer`.
/// Also serves the `openai_compatible` kind (llama.cpp, Ollama `/v1`, vLLM), where the key is optional.
#[derive(Debug)]
pub struct OpenAiProvider {
    inner: ChatCompletions,
}

impl OpenAiProvider {
    /// Builds the adapter (no reliability layer) for an `openai` or `openai_compatible` config.
    /// `api_key` is the key itself (looked up from `cfg.api_key_env` by the caller).
    pub fn from_config(cfg: &ProviderConfig, api_key: Option<String>) -> Result<Self, LlmError> {
        Self::build(cfg, api_key, None)
    }

    pub(crate) fn build(
        cfg: &ProviderConfig,
        api_key: Option<String>,
        egress: Option<&confab_egress::EgressPolicy>,
    ) -> Result<Self, LlmError> {
        let (base, key_required, default_param) = match cfg.kind {
            ProviderKind::OpenAi => (
                cfg.base_url.as_deref().unwrap_or(DEFAULT_OPENAI_BASE_URL),
                true,
                TokenLimitParam::MaxCompletionTokens,
            ),
            ProviderKind::OpenAiCompatible => (
                cfg.base_url
                    .as_deref()
                    .ok_or_else(|| cfg.err("base_url is required for openai_compatible"))?,
                false,
                TokenLimitParam::MaxTokens,
            ),
            other => return Err(cfg.err(format!("OpenAiProvider cannot serve kind {other:?}"))),
        };
        let key = match api_key {
            Some(k) => Some(ApiKey::new(k).map_err(|e| cfg.err(e))?),
            None if key_required => return Err(cfg.err("an API key is required (set api_key_env)")),
            None => None,
        };
        let url = http::join_path(
            http::parse_base_url("base_url", base).map_err(|e| cfg.err(e))?,
            &["chat", "completions"],
        );
        Ok(OpenAiProvider {
            inner: ChatCompletions {
                name: cfg.name.clone(),
                client: http::build_client(connect_timeout(cfg), egress)?,
                url,
                key,
                auth: Auth::Bearer,
                model: cfg.model.clone(),
                model_required: true,
                token_param: cfg.max_tokens_param.unwrap_or(default_param),
            },
        })
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        self.inner.stream(req).await
    }
}

/// Azure OpenAI: `POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`
/// with an `api-key` header; same body and stream as OpenAI (the model is optional: the
/// deployment decides).
#[derive(Debug)]
pub struct AzureOpenAiProvider {
    inner: ChatCompletions,
}

impl AzureOpenAiProvider {
    /// Builds the adapter (no reliability layer) for an `azure` config.
    pub fn from_config(cfg: &ProviderConfig, api_key: Option<String>) -> Result<Self, LlmError> {
        Self::build(cfg, api_key, None)
    }

    pub(crate) fn build(
        cfg: &ProviderConfig,
        api_key: Option<String>,
        egress: Option<&confab_egress::EgressPolicy>,
    ) -> Result<Self, LlmError> {
        if cfg.kind != ProviderKind::Azure {
            return Err(cfg.err(format!("AzureOpenAiProvider cannot serve kind {:?}", cfg.kind)));
        }
        let endpoint = cfg
            .base_url
            .as_deref()
            .ok_or_else(|| cfg.err("base_url (the Azure endpoint) is required"))?;
        let deployment = cfg
            .azure_deployment
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .ok_or_else(|| cfg.err("azure_deployment is required"))?;
        let api_version = cfg
            .azure_api_version
            .as_deref()
            .unwrap_or(crate::DEFAULT_AZURE_API_VERSION);
        let key = ApiKey::new(api_key.ok_or_else(|| cfg.err("an API key is required (set api_key_env)"))?)
            .map_err(|e| cfg.err(e))?;
        let mut url = http::join_path(
            http::parse_base_url("base_url", endpoint).map_err(|e| cfg.err(e))?,
            &["openai", "deployments", deployment.trim(), "chat", "completions"],
        );
        url.query_pairs_mut().append_pair("api-version", api_version);
        Ok(AzureOpenAiProvider {
            inner: ChatCompletions {
                name: cfg.name.clone(),
                client: http::build_client(connect_timeout(cfg), egress)?,
                url,
                key: Some(key),
                auth: Auth::ApiKeyHeader,
                model: cfg.model.clone(),
                model_required: false,
                token_param: cfg.max_tokens_param.unwrap_or(TokenLimitParam::MaxCompletionTokens),
            },
        })
    }
}

#[async_trait::async_trait]
impl LlmProvider for AzureOpenAiProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        self.inner.stream(req).await
    }
}

// ---- stream parsing ----

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// `data: {chunk}` lines, then `data: [DONE]`. Usage (from `stream_options.include_usage`) and
/// the finish reason are remembered and reported once, just before `Done`.
#[derive(Default)]
pub(crate) struct OpenAiParser {
    finish_reason: Option<String>,
    usage: Option<(u32, u32)>,
}

impl SseParser for OpenAiParser {
    fn on_event(&mut self, ev: Event) -> Result<Vec<StreamEvent>, LlmError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            let mut out = Vec::with_capacity(2);
            if let Some((prompt_tokens, completion_tokens)) = self.usage.take() {
                out.push(StreamEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                });
            }
            out.push(StreamEvent::Done {
                finish_reason: self.finish_reason.take(),
            });
            return Ok(out);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| LlmError::StreamCut(format!("malformed chunk from the provider: {e}")))?;
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            let message = err["message"].as_str().or(err.as_str()).unwrap_or("unknown error");
            return Err(LlmError::StreamCut(format!(
                "provider error event: {}",
                http::truncate(message, 300)
            )));
        }
        if ev.event == "error" {
            return Err(LlmError::StreamCut("provider error event".into()));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some((u.prompt_tokens, u.completion_tokens));
        }
        let mut out = Vec::new();
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.and_then(|d| d.content).filter(|t| !t.is_empty()) {
                out.push(StreamEvent::Delta(text));
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(out)
    }

    fn terminal_marker(&self) -> &'static str {
        "[DONE]"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Event {
        Event {
            event: "message".into(),
            data: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_openai_chunks() {
        let mut p = OpenAiParser::default();
        let evs = [
            r#"{"choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
            "[DONE]",
        ];
        let out: Vec<StreamEvent> = evs.iter().flat_map(|e| p.on_event(data(e)).unwrap()).collect();
        assert_eq!(
            out,
            [
                StreamEvent::Delta("Hel".into()),
                StreamEvent::Delta("lo".into()),
                StreamEvent::Usage {
                    prompt_tokens: 7,
                    completion_tokens: 2
                },
                StreamEvent::Done {
                    finish_reason: Some("stop".into())
                },
            ]
        );
    }

    #[test]
    fn error_chunk_is_an_error() {
        let mut p = OpenAiParser::default();
        let e = p
            .on_event(data(r#"{"error":{"message":"overloaded","type":"server_error"}}"#))
            .unwrap_err();
        assert!(matches!(e, LlmError::StreamCut(m) if m.contains("overloaded")));
        assert!(p.on_event(data("not json")).is_err());
    }
}
