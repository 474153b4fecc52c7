//! Confab's LLM provider layer.
//!
//! * [`LlmProvider`] — one streamed chat completion per call, as a stream of [`StreamEvent`]s.
//! * Adapters: [`OpenAiProvider`] (OpenAI and any OpenAI-compatible server), [`AzureOpenAiProvider`],
//!   [`AnthropicProvider`].
//! * [`Reliable`] — timeouts, retries before the first token, concurrency cap, circuit breaker.
//! * [`Fallback`] — tries providers in order until one starts answering.
//! * [`build_provider`] — builds an adapter wrapped in [`Reliable`] from a [`ProviderConfig`].
//! * `fake` (cargo feature `fake`) — an in-process fake provider server for tests.
//!
//! Dropping an [`EventStream`] drops the underlying HTTP response, which closes the upstream
//! connection: that is how a "stop generating" reaches the provider.

mod anthropic;
mod config;
mod error;
mod fallback;
mod http;
mod openai;
pub mod probe;
mod reliable;

#[cfg(feature = "fake")]
pub mod fake;

/// Entry points for the fuzz targets (`fuzz/`): a provider's response body, in chunks, through the real SSE
/// and JSON parsing of each wire format. Not part of the supported API.
#[doc(hidden)]
pub mod fuzz {
    use futures_util::{FutureExt, StreamExt};

    use crate::{LlmError, StreamEvent, http};

    /// The events an OpenAI-format (`anthropic == false`) or Anthropic-format stream yields for a 2xx response
    /// whose body arrives as `chunks`.
    pub fn parse_sse(anthropic: bool, chunks: Vec<Vec<u8>>) -> Vec<Result<StreamEvent, LlmError>> {
        let body = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, String>));
        let stream = if anthropic {
            http::sse_stream_from(body, crate::anthropic::AnthropicParser::default())
        } else {
            http::sse_stream_from(body, crate::openai::OpenAiParser::default())
        };
        // Every chunk is ready at once: the whole stream completes without waiting.
        stream
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("an in-memory body never waits")
    }
}

use serde::{Deserialize, Serialize};

pub use anthropic::{ANTHROPIC_VERSION, AnthropicProvider, DEFAULT_ANTHROPIC_BASE_URL};
pub use config::{
    DEFAULT_AZURE_API_VERSION, ProviderConfig, ProviderKind, TokenLimitParam, build_guarded_provider, build_provider,
    build_providers,
};
pub use error::{LlmError, PHASE_CONNECT, PHASE_FIRST_TOKEN, PHASE_IDLE};
pub use fallback::Fallback;
pub use openai::{AzureOpenAiProvider, DEFAULT_OPENAI_BASE_URL, OpenAiProvider};
pub use reliable::{ReliabilityPolicy, Reliable};

/// Who wrote a message. Serialized lowercase (`"system"`, `"user"`, `"assistant"`), as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// One chat completion request, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// `None` = the provider's configured model.
    pub model: Option<String>,
    /// System prompt, sent the way each API wants it (OpenAI: a first system message;
    /// Anthropic: the top-level `system` field). `Role::System` entries in `messages` are
    /// sent as system messages (OpenAI) or appended to the top-level system prompt (Anthropic).
    pub system: Option<String>,
    /// User/assistant turns, oldest first.
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    /// Always sent (`max_tokens` or `max_completion_tokens`, see [`TokenLimitParam`]).
    pub max_tokens: u32,
}

impl ChatRequest {
    /// A request with the given turns and token cap; no model override, system prompt or temperature.
    pub fn new(messages: Vec<ChatMessage>, max_tokens: u32) -> Self {
        ChatRequest {
            model: None,
            system: None,
            messages,
            temperature: None,
            max_tokens,
        }
    }
}

/// One item of a streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// A piece of generated text.
    Delta(String),
    /// Token usage, when the provider reports it (may come more than once; the last one wins).
    Usage { prompt_tokens: u32, completion_tokens: u32 },
    /// The stream ended properly (`[DONE]` / `message_stop`). Always the last item.
    Done { finish_reason: Option<String> },
}

/// A streamed completion. Ends after `Done` or after the first `Err`.
pub type EventStream = futures_util::stream::BoxStream<'static, Result<StreamEvent, LlmError>>;

/// A chat-completion backend.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync {
    fn name(&self) -> &str;

    /// Starts a streamed completion. Dropping the returned stream must abort the upstream HTTP
    /// request promptly (closing the connection).
    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError>;
}

/// The result of draining an [`EventStream`] with [`collect`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Collected {
    /// All deltas, concatenated (the partial text if `error` is set).
    pub text: String,
    /// The last usage report, as `(prompt_tokens, completion_tokens)`.
    pub usage: Option<(u32, u32)>,
    /// `Some(finish_reason)` if the stream ended with `Done`.
    pub done: Option<Option<String>>,
    /// The error that ended the stream, if any.
    pub error: Option<LlmError>,
}

impl Collected {
    /// True if the stream ended with `Done` and no error.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.done.is_some()
    }
}

/// Drains a stream into text, usage and outcome. A stream that ends without `Done` and without
/// an error (which the adapters never produce) is reported as `StreamCut`.
pub async fn collect(mut stream: EventStream) -> Collected {
    use futures_util::StreamExt;
    let mut out = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Delta(t)) => out.text.push_str(&t),
            Ok(StreamEvent::Usage {
                prompt_tokens,
                completion_tokens,
            }) => out.usage = Some((prompt_tokens, completion_tokens)),
            Ok(StreamEvent::Done { finish_reason }) => {
                out.done = Some(finish_reason);
                return out;
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
    out.error = Some(LlmError::StreamCut("stream ended without a terminal event".into()));
    out
}
