//! The built-in model: a small GGUF chat model (by default SmolLM2-135M-Instruct) run inside the server on
//! CPU with candle, served through the same [`LlmProvider`] interface as the remote providers.
//!
//! * [`load`] reads the GGUF: weights (requantized to Q8_0 where candle has no fast CPU kernel for the
//!   file's type, e.g. Q4_1), tokenizer and chat template rebuilt from the metadata ([`tokenizer`]).
//! * [`engine`] generates on a dedicated thread, all active conversations in one batched step.
//! * [`BuiltinProvider`] streams deltas, then usage (real token counts) and `Done`; dropping the stream
//!   stops generation before the next token.

pub mod engine;
pub mod kernels;
pub mod llama;
pub mod tokenizer;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use confab_llm::{ChatRequest, EventStream, LlmError, LlmProvider, ProviderConfig, ProviderKind};
use futures_util::StreamExt;

use crate::engine::{Engine, Job, Sampler};
use crate::llama::Model;
use crate::tokenizer::ChatTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read the model file: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad model file: {0}")]
    Model(String),
    #[error("chat template: {0}")]
    Template(String),
}

impl From<candle_core::Error> for LocalError {
    fn from(e: candle_core::Error) -> Self {
        LocalError::Model(e.to_string())
    }
}

/// Longest context served (positions in one conversation's KV cache).
pub const MAX_CONTEXT: usize = 8192;

/// A loaded model: weights and tokenizer.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: ChatTokenizer,
}

impl LoadedModel {
    pub fn context_len(&self) -> usize {
        self.model.cfg.context
    }
}

/// Loads a llama-architecture GGUF chat model (llama, SmolLM, Mistral-style) for CPU inference.
pub fn load(path: &Path) -> Result<LoadedModel, LocalError> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let ct = Content::read(&mut file).map_err(|e| LocalError::Model(e.to_string()))?;
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(LocalError::Model(format!(
            "architecture {arch:?} is not supported (llama-architecture models only)"
        )));
    }
    let tokenizer = ChatTokenizer::from_gguf(&ct)?;
    let context = ct
        .metadata
        .get("llama.context_length")
        .and_then(|v| v.to_u32().ok())
        .map_or(2048, |n| n as usize)
        .min(MAX_CONTEXT);
    let model = Model::load(&ct, &mut file, context)?;
    Ok(LoadedModel { model, tokenizer })
}

/// The built-in model as a provider.
pub struct BuiltinProvider {
    name: String,
    engine: Engine,
}

impl BuiltinProvider {
    /// Loads the model of `cfg.model_path` and starts its generation thread.
    pub fn from_config(cfg: &ProviderConfig) -> Result<BuiltinProvider, LlmError> {
        let err = |what: String| LlmError::Config(format!("provider {:?}: {what}", cfg.name));
        if cfg.kind != ProviderKind::Builtin {
            return Err(err("not a built-in provider".into()));
        }
        let path = cfg
            .model_path
            .as_deref()
            .ok_or_else(|| err("model_path is required".into()))?;
        let started = std::time::Instant::now();
        let model = load(Path::new(path)).map_err(|e| err(format!("{path}: {e}")))?;
        tracing::info!(
            provider = %cfg.name,
            path,
            context = model.context_len(),
            ms = started.elapsed().as_millis() as u64,
            "built-in model loaded"
        );
        let sampler = Sampler {
            top_p: cfg.top_p,
            repeat_penalty: cfg.repeat_penalty,
            seed: cfg.seed,
        };
        let engine = Engine::start(
            Arc::new(model.model),
            Arc::new(model.tokenizer),
            cfg.max_active,
            cfg.max_queue,
            sampler,
        )
        .map_err(|e| err(format!("cannot start the generation thread: {e}")))?;
        Ok(BuiltinProvider {
            name: cfg.name.clone(),
            engine,
        })
    }

    /// The generation engine (queue and counters).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Builds a built-in provider (the catalog's constructor for `kind = "builtin"`).
pub fn build(cfg: &ProviderConfig) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Ok(Arc::new(BuiltinProvider::from_config(cfg)?))
}

#[async_trait::async_trait]
impl LlmProvider for BuiltinProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.engine.submit(Job { req, tx })?;
        let events = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) });
        // The generation thread ends a conversation with `Done` or an error; if it is dropped without one
        // (shutdown), the stream ends early, which consumers treat as cut.
        Ok(events
            .chain(futures_util::stream::once(async {
                Err(LlmError::StreamCut("the built-in model stopped".into()))
            }))
            .scan(false, |ended, ev| {
                if *ended {
                    return std::future::ready(None);
                }
                *ended = matches!(ev, Ok(confab_llm::StreamEvent::Done { .. }) | Err(_));
                std::future::ready(Some(ev))
            })
            .boxed())
    }
}
