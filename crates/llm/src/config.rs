//! Provider configuration (one entry of a TOML `[[providers]]` array) and [`build_provider`].

use std::collections::HashSet;
use std::sync::Arc;

use confab_egress::{EgressError, EgressPolicy};
use serde::{Deserialize, Serialize};

use crate::{
    AnthropicProvider, AzureOpenAiProvider, LlmError, LlmProvider, OpenAiProvider, ReliabilityPolicy, Reliable,
};

/// Default Azure OpenAI `api-version` (a GA version that accepts `max_completion_tokens`).
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderKind {
    /// api.openai.com (key required).
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI (`base_url` = the resource endpoint, `azure_deployment` required; key required).
    #[serde(rename = "azure")]
    Azure,
    /// Anthropic Messages API (key required).
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Any OpenAI-compatible server: llama.cpp `llama-server`, Ollama `/v1`, vLLM, ...
    /// (`base_url` required, key optional).
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
    /// The built-in model: a GGUF chat model run inside the server on CPU (`model_path` required;
    /// crate `confab-llm-local`, cargo feature `builtin-model` of the server). Configuration file only.
    #[serde(rename = "builtin")]
    Builtin,
}

/// Which body field carries [`crate::ChatRequest::max_tokens`] for the OpenAI-style APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLimitParam {
    /// `max_tokens`: what OpenAI-compatible servers (llama.cpp, Ollama, vLLM) understand.
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current field (`max_tokens` is deprecated there and
    /// rejected by reasoning models); also accepted by Azure since api-version 2024-09-01-preview.
    MaxCompletionTokens,
}

/// One provider. The API key itself is never part of the configuration: `api_key_env` names the
/// environment variable that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, used in logs, errors ([`LlmError::CircuitOpen`]) and [`LlmProvider::name`].
    pub name: String,
    pub kind: ProviderKind,
    /// OpenAI: default `https://api.openai.com/v1`; Anthropic: default `https://api.anthropic.com`;
    /// Azure: the resource endpoint (`https://NAME.openai.azure.com`, required);
    /// openai_compatible: e.g. `http://127.0.0.1:11434/v1` (required).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model used when the request does not name one (required for every kind but Azure, unless
    /// every request names a model).
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub azure_deployment: Option<String>,
    /// Default [`DEFAULT_AZURE_API_VERSION`].
    #[serde(default)]
    pub azure_api_version: Option<String>,
    /// TCP/TLS connect timeout.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Per attempt: from sending the request to the first generated token.
    #[serde(default = "defaults::first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Largest gap between two events after the first token.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Concurrent streams allowed towards this provider.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// Longest wait for a concurrency slot before [`LlmError::Overloaded`].
    #[serde(default = "defaults::queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Retries (after the first attempt), only before the first token.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// Consecutive failed calls that open the circuit (0 disables the breaker).
    #[serde(default = "defaults::circuit_failure_threshold")]
    pub circuit_failure_threshold: u32,
    /// How long an open circuit fails fast before one trial call is let through.
    #[serde(default = "defaults::circuit_cooldown_ms")]
    pub circuit_cooldown_ms: u64,
    // ---- additions beyond the base set ----
    /// Overrides the body field used for the token cap (OpenAI-style kinds only). Default:
    /// `max_completion_tokens` for `openai` and `azure`, `max_tokens` for `openai_compatible`.
    #[serde(default)]
    pub max_tokens_param: Option<TokenLimitParam>,
    /// Budget from the call until the first token across queueing, all attempts and backoff
    /// waits; a retry whose wait would pass it is not made.
    #[serde(default = "defaults::deadline_ms")]
    pub deadline_ms: u64,
    /// First backoff step (doubled per retry, with jitter) when the provider gives no retry-after.
    #[serde(default = "defaults::retry_base_delay_ms")]
    pub retry_base_delay_ms: u64,
    /// Cap of one backoff step.
    #[serde(default = "defaults::retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// A provider asking for a longer wait than this (retry-after) is not retried.
    #[serde(default = "defaults::max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    // ---- the built-in model (kind = "builtin") only ----
    /// The model file (GGUF).
    #[serde(default)]
    pub model_path: Option<String>,
    /// Conversations generated at once (one batched step for all); more wait in the queue.
    #[serde(default = "defaults::max_active")]
    pub max_active: usize,
    /// Conversations waiting for a slot; beyond this a call fails at once as overloaded.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: usize,
    /// Nucleus sampling: the smallest set of tokens whose probabilities add up to this.
    #[serde(default = "defaults::top_p")]
    pub top_p: f32,
    /// Penalty on tokens of the last 64 (1.0: none).
    #[serde(default = "defaults::repeat_penalty")]
    pub repeat_penalty: f32,
    /// Fixed sampling seed (reproducible output; for tests). Unset: a fresh seed per conversation.
    #[serde(default)]
    pub seed: Option<u64>,
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn first_token_timeout_ms() -> u64 {
        30_000
    }
    pub fn idle_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_concurrency() -> usize {
        16
    }
    pub fn queue_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_retries() -> u32 {
        2
    }
    pub fn circuit_failure_threshold() -> u32 {
        5
    }
    pub fn circuit_cooldown_ms() -> u64 {
        30_000
    }
    pub fn deadline_ms() -> u64 {
        60_000
    }
    pub fn retry_base_delay_ms() -> u64 {
        250
    }
    pub fn retry_max_delay_ms() -> u64 {
        8_000
    }
    pub fn max_retry_after_ms() -> u64 {
        60_000
    }
    pub fn max_active() -> usize {
        4
    }
    pub fn max_queue() -> usize {
        32
    }
    pub fn top_p() -> f32 {
        0.9
    }
    pub fn repeat_penalty() -> f32 {
        1.1
    }
}

impl ProviderConfig {
    /// A config with every optional field unset and every number at its default.
    pub fn new(name: impl Into<String>, kind: ProviderKind) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: None,
            model: None,
            api_key_env: None,
            azure_deployment: None,
            azure_api_version: None,
            connect_timeout_ms: defaults::connect_timeout_ms(),
            first_token_timeout_ms: defaults::first_token_timeout_ms(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            max_concurrency: defaults::max_concurrency(),
            queue_timeout_ms: defaults::queue_timeout_ms(),
            max_retries: defaults::max_retries(),
            circuit_failure_threshold: defaults::circuit_failure_threshold(),
            circuit_cooldown_ms: defaults::circuit_cooldown_ms(),
            max_tokens_param: None,
            deadline_ms: defaults::deadline_ms(),
            retry_base_delay_ms: defaults::retry_base_delay_ms(),
            retry_max_delay_ms: defaults::retry_max_delay_ms(),
            max_retry_after_ms: defaults::max_retry_after_ms(),
            model_path: None,
            max_active: defaults::max_active(),
            max_queue: defaults::max_queue(),
            top_p: defaults::top_p(),
            repeat_penalty: defaults::repeat_penalty(),
            seed: None,
        }
    }

    pub(crate) fn err(&self, what: impl std::fmt::Display) -> LlmError {
        LlmError::Config(format!("provider {:?}: {what}", self.name))
    }

    fn validate(&self) -> Result<(), LlmError> {
        if self.name.trim().is_empty() {
            return Err(LlmError::Config("provider name is empty".into()));
        }
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("deadline_ms", self.deadline_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(self.err(format!("{field} must be > 0")));
            }
        }
        if self.max_concurrency == 0 {
            return Err(self.err("max_concurrency must be > 0"));
        }
        if self.max_concurrency > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(self.err("max_concurrency is too large"));
        }
        Ok(())
    }
}

/// Builds the adapter for `cfg.kind`, wrapped in [`Reliable`] (timeouts, retries, concurrency
/// cap, circuit breaker). `env` looks up environment variables (pass
/// `&|k| std::env::var(k).ok()` in production); it is only asked for `cfg.api_key_env`.
pub fn build_provider(
    cfg: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    build(cfg, env, None)
}

/// [`build_provider`] for a provider the server must not trust with its own network (one added through an
/// API rather than by the operator): a `base_url` at a literal address outside `egress` is refused here, and
/// the provider's HTTP client checks every address a name resolves to when it connects, without following
/// redirects.
pub fn build_guarded_provider(
    cfg: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
    egress: &EgressPolicy,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    if let Some(base) = &cfg.base_url {
        egress.check_url(base.trim()).map_err(|e| match e {
            EgressError::Forbidden(ip) => cfg.err(format!(
                "base_url points at {ip}, a private or reserved address, which providers added through the API \
                 may only use when the server's egress allowlist includes it"
            )),
            other => cfg.err(format!("base_url: {other}")),
        })?;
    }
    build(cfg, env, Some(egress))
}

fn build(
    cfg: &ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
    egress: Option<&EgressPolicy>,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    cfg.validate()?;
    let key = match &cfg.api_key_env {
        Some(var) => match env(var).filter(|k| !k.trim().is_empty()) {
            Some(k) => Some(k),
            None => return Err(cfg.err(format!("environment variable {var} (api_key_env) is not set"))),
        },
        None => None,
    };
    let policy = ReliabilityPolicy::from_config(cfg);
    let provider: Arc<dyn LlmProvider> = match cfg.kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            Arc::new(Reliable::new(OpenAiProvider::build(cfg, key, egress)?, policy))
        }
        ProviderKind::Azure => Arc::new(Reliable::new(AzureOpenAiProvider::build(cfg, key, egress)?, policy)),
        ProviderKind::Anthropic => Arc::new(Reliable::new(AnthropicProvider::build(cfg, key, egress)?, policy)),
        ProviderKind::Builtin => {
            return Err(
                cfg.err("the built-in model is not part of this build (cargo feature `builtin-model` of confab)")
            );
        }
    };
    tracing::debug!(provider = %cfg.name, kind = ?cfg.kind, "LLM provider configured");
    Ok(provider)
}

/// [`build_provider`] for every entry, in order; names must be unique.
/// Wrap the result in [`crate::Fallback`] to use them as a fallback chain.
pub fn build_providers(
    cfgs: &[ProviderConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Arc<dyn LlmProvider>>, LlmError> {
    let mut seen = HashSet::new();
    cfgs.iter()
        .map(|cfg| {
            if !seen.insert(cfg.name.as_str()) {
                return Err(cfg.err("duplicate provider name"));
            }
            build_provider(cfg, env)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_snake_case() {
        let kinds: Vec<ProviderKind> =
            serde_json::from_str(r#"["openai","azure","anthropic","openai_compatible"]"#).unwrap();
        assert_eq!(
            kinds,
            [
                ProviderKind::OpenAi,
                ProviderKind::Azure,
                ProviderKind::Anthropic,
                ProviderKind::OpenAiCompatible
            ]
        );
        assert!(serde_json::from_str::<ProviderKind>(r#""open_ai""#).is_err());
    }

    #[test]
    fn defaults_apply() {
        let cfg: ProviderConfig = serde_json::from_str(r#"{"name":"a","kind":"openai"}"#).unwrap();
        assert_eq!(cfg, ProviderConfig::new("a", ProviderKind::OpenAi));
        assert_eq!(cfg.connect_timeout_ms, 5000);
        assert_eq!(cfg.first_token_timeout_ms, 30000);
        assert_eq!(cfg.idle_timeout_ms, 30000);
        assert_eq!(cfg.max_concurrency, 16);
        assert_eq!(cfg.queue_timeout_ms, 10000);
        assert_eq!(cfg.max_retries, 2);
        assert_eq!(cfg.circuit_failure_threshold, 5);
        assert_eq!(cfg.circuit_cooldown_ms, 30000);
    }

    #[test]
    fn key_in_config_is_rejected() {
        let r = serde_json::from_str::<ProviderConfig>(r#"{"name":"a","kind":"openai","api_key":"sk-123"}"#);
        let e = r.unwrap_err().to_string();
        assert!(!e.contains("sk-123"), "{e}");
    }

    #[test]
    fn build_errors() {
        let no_env = |_: &str| None;
        let mut cfg = ProviderConfig::new("a", ProviderKind::OpenAi);
        cfg.api_key_env = Some("MY_KEY".into());
        let e = build_provider(&cfg, &no_env).err().unwrap();
        assert!(matches!(&e, LlmError::Config(m) if m.contains("MY_KEY")), "{e}");

        let env = |k: &str| (k == "MY_KEY").then(|| "sk-x".to_string());
        cfg.model = Some("gpt-4o-mini".into());
        assert!(build_provider(&cfg, &env).is_ok());

        let mut cfg = ProviderConfig::new("a", ProviderKind::OpenAi);
        cfg.model = Some("m".into());
        assert!(build_provider(&cfg, &no_env).is_err(), "openai without key");

        let cfg = ProviderConfig::new("c", ProviderKind::OpenAiCompatible);
        assert!(build_provider(&cfg, &no_env).is_err(), "compatible without base_url");
        let mut cfg = ProviderConfig::new("c", ProviderKind::OpenAiCompatible);
        cfg.base_url = Some("http://127.0.0.1:11434/v1".into());
        assert!(build_provider(&cfg, &no_env).is_ok(), "compatible without key");

        let mut cfg = ProviderConfig::new("z", ProviderKind::Azure);
        cfg.base_url = Some("https://x.openai.azure.com".into());
        cfg.api_key_env = Some("MY_KEY".into());
        assert!(build_provider(&cfg, &env).is_err(), "azure without deployment");
        cfg.azure_deployment = Some("gpt4o".into());
        assert!(build_provider(&cfg, &env).is_ok());

        let mut cfg = ProviderConfig::new("n", ProviderKind::Anthropic);
        cfg.api_key_env = Some("MY_KEY".into());
        cfg.max_concurrency = 0;
        assert!(build_provider(&cfg, &env).is_err());

        let a = ProviderConfig {
            base_url: Some("http://h/v1".into()),
            ..ProviderConfig::new("same", ProviderKind::OpenAiCompatible)
        };
        let e = build_providers(&[a.clone(), a], &no_env).err().unwrap();
        assert!(e.to_string().contains("duplicate"));
    }
}
