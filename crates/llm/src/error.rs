//! The error type shared by every provider, adapter and reliability layer.

use std::time::Duration;

/// `Timeout::phase` while connecting (TCP/TLS), set through reqwest's `connect_timeout`.
pub const PHASE_CONNECT: &str = "connect";
/// `Timeout::phase` between sending the request and the first generated token
/// (also used when the overall first-token deadline across retries runs out).
pub const PHASE_FIRST_TOKEN: &str = "first token";
/// `Timeout::phase` for a gap between two stream events after the first token.
pub const PHASE_IDLE: &str = "idle";

/// Everything that can go wrong when talking to an LLM provider.
///
/// Display/Debug texts never contain API keys: adapters never put the key into an
/// error, and upstream error messages are scrubbed of the key before they are stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// A deadline passed; `phase` is one of [`PHASE_CONNECT`], [`PHASE_FIRST_TOKEN`], [`PHASE_IDLE`].
    #[error("timed out ({phase})")]
    Timeout { phase: &'static str },
    /// HTTP 429 (or an equivalent); `retry_after` is what the provider asked for, if anything.
    #[error("rate limited by the provider{}", fmt_retry_after(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// A non-success HTTP status from the provider, with the provider's (scrubbed, truncated) message.
    #[error("provider returned HTTP {status}: {message}")]
    Upstream { status: u16, message: String },
    /// The stream failed after HTTP 200: the connection ended before the terminal marker
    /// (`[DONE]` / `message_stop`), the body could not be read or parsed, or the provider sent an
    /// in-stream error event. Always a failure, never a silent success.
    #[error("stream cut: {0}")]
    StreamCut(String),
    /// The circuit breaker for `provider` is open; the call was not attempted.
    #[error("circuit open for provider {provider}")]
    CircuitOpen { provider: String },
    /// The concurrency cap was reached and the queue deadline passed.
    #[error("too many concurrent requests to the provider (queue deadline passed)")]
    Overloaded,
    /// Invalid configuration (missing model, missing key variable, bad URL, ...).
    #[error("configuration error: {0}")]
    Config(String),
    /// Connection-level failure before a response arrived (refused, reset, DNS, TLS, ...).
    #[error("transport error: {0}")]
    Transport(String),
}

fn fmt_retry_after(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (retry after {} ms)", d.as_millis()),
        None => String::new(),
    }
}

impl LlmError {
    /// Whether the same request may be sent again (to the same provider) — provided that nothing
    /// of the reply has been shown yet. The reliability layer never retries after a delta.
    ///
    /// Retryable: rate limits, HTTP 408/5xx (incl. Anthropic's 529 and Ollama's 503), connection
    /// errors, connect timeouts, and a stream cut (only ever retried before the first token).
    /// Not retryable: first-token / idle timeouts (a hung provider would just hang again),
    /// other 4xx, open circuit, full queue, bad configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Timeout { phase } => *phase == PHASE_CONNECT,
            LlmError::RateLimited { .. } => true,
            LlmError::Upstream { status, .. } => *status == 408 || *status >= 500,
            LlmError::StreamCut(_) => true,
            LlmError::Transport(_) => true,
            LlmError::CircuitOpen { .. } | LlmError::Overloaded | LlmError::Config(_) => false,
        }
    }

    /// Whether this error says something about the provider's health (counts towards the circuit
    /// breaker). Rate limits, client-side 4xx, our own queue and configuration errors do not.
    pub fn is_provider_failure(&self) -> bool {
        match self {
            LlmError::Timeout { .. } | LlmError::StreamCut(_) | LlmError::Transport(_) => true,
            LlmError::Upstream { status, .. } => *status == 408 || *status >= 500,
            LlmError::RateLimited { .. }
            | LlmError::CircuitOpen { .. }
            | LlmError::Overloaded
            | LlmError::Config(_) => false,
        }
    }

    /// A short text that is safe to show to chat users (no provider names, URLs or messages).
    pub fn user_message(&self) -> String {
        match self {
            LlmError::Timeout { .. } => "The AI provider took too long to respond.",
            LlmError::RateLimited { .. } => "The AI provider is rate-limiting requests. Please try again shortly.",
            LlmError::Upstream { status, .. } if *status >= 500 => "The AI provider had an internal error.",
            LlmError::Upstream { .. } => "The AI provider rejected the request.",
            LlmError::StreamCut(_) => "The reply was interrupted.",
            LlmError::CircuitOpen { .. } => "The AI provider is temporarily unavailable.",
            LlmError::Overloaded => "Too many requests are waiting for the AI. Please try again.",
            LlmError::Config(_) => "The bot's AI provider is not configured correctly.",
            LlmError::Transport(_) => "Could not reach the AI provider.",
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(LlmError::RateLimited { retry_after: None }.is_retryable());
        assert!(
            LlmError::Upstream {
                status: 500,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            LlmError::Upstream {
                status: 529,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            LlmError::Upstream {
                status: 503,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !LlmError::Upstream {
                status: 400,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !LlmError::Upstream {
                status: 401,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(LlmError::Timeout { phase: PHASE_CONNECT }.is_retryable());
        assert!(
            !LlmError::Timeout {
                phase: PHASE_FIRST_TOKEN
            }
            .is_retryable()
        );
        assert!(!LlmError::Timeout { phase: PHASE_IDLE }.is_retryable());
        assert!(LlmError::Transport("x".into()).is_retryable());
        assert!(!LlmError::Overloaded.is_retryable());
        assert!(!LlmError::Config("x".into()).is_retryable());
        assert!(!LlmError::CircuitOpen { provider: "p".into() }.is_retryable());
        assert!(!LlmError::RateLimited { retry_after: None }.is_provider_failure());
        assert!(LlmError::StreamCut("x".into()).is_provider_failure());
    }

    #[test]
    fn display_and_user_message() {
        let e = LlmError::RateLimited {
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(e.to_string(), "rate limited by the provider (retry after 1500 ms)");
        let e = LlmError::Timeout {
            phase: PHASE_FIRST_TOKEN,
        };
        assert_eq!(e.to_string(), "timed out (first token)");
        let e = LlmError::Upstream {
            status: 502,
            message: "bad gateway at http://10.0.0.1".into(),
        };
        assert!(!e.user_message().contains("10.0.0.1"));
        assert!(!e.user_message().is_empty());
    }
}
