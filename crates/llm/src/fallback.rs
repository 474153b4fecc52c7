//! Provider fallback chain.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::reliable::prime;
use crate::{ChatRequest, EventStream, LlmError, LlmProvider};

/// Tries each provider in order. It moves to the next one only if the previous one failed
/// **before yielding any delta** (at `stream()` or before the first `Delta`); once a provider has
/// produced text, its stream is returned as is and a later failure is the caller's error.
///
/// [`LlmProvider::name`] is the member names joined with `|`;
/// [`Fallback::stream_with_provider`] also says which member answered (it is logged too).
pub struct Fallback {
    providers: Vec<Arc<dyn LlmProvider>>,
    name: String,
}

impl Fallback {
    pub fn new(providers: Vec<Arc<dyn LlmProvider>>) -> Self {
        let name = providers.iter().map(|p| p.name()).collect::<Vec<_>>().join("|");
        Fallback { providers, name }
    }

    pub fn providers(&self) -> &[Arc<dyn LlmProvider>] {
        &self.providers
    }

    /// Like [`LlmProvider::stream`], plus the name of the provider that answered.
    /// With every provider failing, the last provider's error is returned.
    pub async fn stream_with_provider(&self, req: ChatRequest) -> Result<(String, EventStream), LlmError> {
        let mut last_err = None;
        for (i, p) in self.providers.iter().enumerate() {
            let attempt = match p.stream(req.clone()).await {
                Ok(stream) => prime(stream).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok((head, rest)) => {
                    if i > 0 {
                        tracing::info!(fallback = %self.name, provider = %p.name(), "fallback provider answered");
                    } else {
                        tracing::debug!(fallback = %self.name, provider = %p.name(), "provider answered");
                    }
                    let stream = futures_util::stream::iter(head.into_iter().map(Ok)).chain(rest).boxed();
                    return Ok((p.name().to_string(), stream));
                }
                Err(e) => {
                    let has_next = i + 1 < self.providers.len();
                    tracing::warn!(
                        fallback = %self.name,
                        provider = %p.name(),
                        error = %e,
                        next = has_next,
                        "provider failed before the first token"
                    );
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| LlmError::Config("fallback chain has no providers".into())))
    }
}

#[async_trait::async_trait]
impl LlmProvider for Fallback {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        self.stream_with_provider(req).await.map(|(_, s)| s)
    }
}
