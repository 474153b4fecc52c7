//! Generation: one dedicated thread advances every active conversation in each step, one token (or one
//! prompt chunk of at most 128 tokens) each, through one batched forward pass: the weights are read once
//! per step for all of them, conversations share the model fairly, and a long prompt never starves the
//! others. The matrix products inside each step use every core (candle's barrier pool, `CANDLE_NUM_THREADS`).
//!
//! Up to `max_active` conversations are generated at once; up to `max_queue` more wait in arrival order;
//! beyond that a call fails at once. A conversation whose stream was dropped (stop) is abandoned before
//! its next token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use confab_llm::{ChatRequest, LlmError, StreamEvent};
use tokio::sync::mpsc;

use crate::llama::{Model, Scratch, State};
use crate::tokenizer::ChatTokenizer;

/// Prompt tokens processed per step: bounds how long one conversation's prompt holds up the others.
const PREFILL_CHUNK: usize = 128;
/// Recent tokens the repetition penalty looks at.
const REPEAT_WINDOW: usize = 64;
/// Temperature when the request sets none (SmolLM2's recommendation).
const DEFAULT_TEMPERATURE: f32 = 0.2;

pub type EventTx = mpsc::UnboundedSender<Result<StreamEvent, LlmError>>;

#[derive(Clone, Debug)]
pub struct Sampler {
    pub top_p: f32,
    pub repeat_penalty: f32,
    pub seed: Option<u64>,
}

pub struct Job {
    pub req: ChatRequest,
    pub tx: EventTx,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    shutdown: AtomicBool,
    max_queue: usize,
    /// Conversations being generated.
    active: AtomicUsize,
    /// Tokens generated, all conversations together.
    generated: AtomicU64,
}

pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the generation thread.
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<ChatTokenizer>,
        max_active: usize,
        max_queue: usize,
        sampler: Sampler,
    ) -> std::io::Result<Engine> {
        let context_len = model.cfg.context;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            max_queue,
            active: AtomicUsize::new(0),
            generated: AtomicU64::new(0),
        });
        let worker = Worker {
            shared: shared.clone(),
            model,
            context_len,
            tokenizer,
            max_active: max_active.max(1),
            sampler,
        };
        std::thread::Builder::new()
            .name("confab-builtin-model".into())
            .spawn(move || worker.run())?;
        Ok(Engine { shared })
    }

    /// Queues a conversation; fails at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), LlmError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.shared.max_queue {
            return Err(LlmError::Overloaded);
        }
        q.push_back(job);
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Conversations waiting for a slot.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Conversations being generated.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Tokens generated since the start, all conversations together.
    pub fn generated_tokens(&self) -> u64 {
        self.shared.generated.load(Ordering::Acquire)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

struct Worker {
    shared: Arc<Shared>,
    model: Arc<Model>,
    tokenizer: Arc<ChatTokenizer>,
    context_len: usize,
    max_active: usize,
    sampler: Sampler,
}

impl Worker {
    fn run(self) {
        let tokenizer = self.tokenizer.clone();
        let model = self.model.clone();
        let mut scratch = Scratch::default();
        let mut active: Vec<Conversation<'_>> = Vec::new();
        loop {
            {
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if self.shared.shutdown.load(Ordering::Acquire) {
                        return; // dropping the conversations ends their streams
                    }
                    while active.len() < self.max_active {
                        let Some(job) = q.pop_front() else { break };
                        if let Some(c) = self.admit(job, &tokenizer, &model) {
                            active.push(c);
                        }
                    }
                    self.shared.active.store(active.len(), Ordering::Release);
                    if !active.is_empty() {
                        break;
                    }
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
            // One step for every conversation together: a prompt chunk or the last sampled token each.
            let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(active.len());
            active.retain_mut(|c| match c.input(&self.shared.generated) {
                Some(tokens) => {
                    inputs.push(tokens);
                    true
                }
                None => false,
            });
            if !active.is_empty() {
                let mut segs: Vec<(&[u32], &mut State)> = inputs
                    .iter()
                    .zip(active.iter_mut())
                    .map(|(t, c)| (t.as_slice(), &mut c.state))
                    .collect();
                match model.forward_batch(&mut segs, &mut scratch) {
                    Ok(()) => {
                        let mut fed = inputs.iter();
                        active.retain_mut(|c| c.after(fed.next().map_or(0, Vec::len)));
                    }
                    Err(e) => {
                        for c in active.drain(..) {
                            c.fail(&e);
                        }
                    }
                }
            }
            self.shared.active.store(active.len(), Ordering::Release);
        }
    }

    /// Builds the prompt of a queued conversation (oldest turns dropped until it fits the context).
    fn admit<'t>(&self, job: Job, tokenizer: &'t ChatTokenizer, model: &'t Model) -> Option<Conversation<'t>> {
        if job.tx.is_closed() {
            return None; // stopped while queued
        }
        let Job { req, tx } = job;
        let mut messages = req.messages.clone();
        let prompt = loop {
            match tokenizer.prompt(req.system.as_deref(), &messages) {
                Ok(p) if p.ids.len() < self.context_len || messages.len() <= 1 => break p,
                Ok(_) => {
                    messages.remove(0);
                }
                Err(e) => {
                    let _ = tx.send(Err(LlmError::Config(format!("built-in model: {e}"))));
                    return None;
                }
            }
        };
        if prompt.ids.len() >= self.context_len {
            let _ = tx.send(Err(LlmError::Upstream {
                status: 400,
                message: format!(
                    "the message is too long for the built-in model ({} tokens, at most {})",
                    prompt.ids.len(),
                    self.context_len - 1
                ),
            }));
            return None;
        }
        let max_new = (req.max_tokens as usize).clamp(1, self.context_len - prompt.ids.len());
        let temperature = req.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        let seed = self.sampler.seed.unwrap_or_else(rand_seed);
        let sampling = if temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            Sampling::TopP {
                p: self.sampler.top_p as f64,
                temperature: temperature as f64,
            }
        };
        Some(Conversation {
            tx,
            state: State::new(model),
            tokenizer,
            decoder: tokenizer.tokenizer().decode_stream(true),
            logits: LogitsProcessor::from_sampling(seed, sampling),
            repeat_penalty: self.sampler.repeat_penalty,
            prompt: prompt.ids,
            prefilled: 0,
            generated: Vec::new(),
            max_new,
            next: None,
        })
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// One conversation being generated, with its own KV cache (the weights are shared).
struct Conversation<'t> {
    tx: EventTx,
    state: State,
    tokenizer: &'t ChatTokenizer,
    decoder: tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    logits: LogitsProcessor,
    repeat_penalty: f32,
    prompt: Vec<u32>,
    prefilled: usize,
    generated: Vec<u32>,
    max_new: usize,
    /// The token sampled last, not yet fed to the model.
    next: Option<u32>,
}

impl Conversation<'_> {
    /// What this conversation feeds the model next: its next prompt chunk, or the token it sampled last
    /// (which is first streamed to the client). `None` when it is over: stopped (stream dropped), at its
    /// end-of-turn token, or at its token cap.
    fn input(&mut self, generated: &AtomicU64) -> Option<Vec<u32>> {
        if self.tx.is_closed() {
            return None; // stopped: the stream was dropped
        }
        if self.prefilled < self.prompt.len() {
            let end = (self.prefilled + PREFILL_CHUNK).min(self.prompt.len());
            return Some(self.prompt[self.prefilled..end].to_vec());
        }
        let token = self.next.take()?;
        if self.tokenizer.stop_ids().contains(&token) {
            self.finish("stop");
            return None;
        }
        self.generated.push(token);
        generated.fetch_add(1, Ordering::AcqRel);
        match self.decoder.step(token) {
            Ok(Some(piece)) => {
                if self.tx.send(Ok(StreamEvent::Delta(piece))).is_err() {
                    return None;
                }
            }
            Ok(None) => {} // part of a multi-byte character: comes out with the next token
            Err(e) => {
                self.fail(&crate::LocalError::Model(format!("detokenizing: {e}")));
                return None;
            }
        }
        if self.generated.len() >= self.max_new {
            self.finish("length");
            return None;
        }
        Some(vec![token])
    }

    /// After the model ran `fed` tokens of this conversation: samples the next token once the prompt is in.
    /// False when the conversation failed.
    fn after(&mut self, fed: usize) -> bool {
        if self.prefilled < self.prompt.len() {
            self.prefilled += fed;
            if self.prefilled < self.prompt.len() {
                return true;
            }
        }
        match self.sample() {
            Ok(t) => {
                self.next = Some(t);
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    fn fail(&self, e: &crate::LocalError) {
        let _ = self
            .tx
            .send(Err(LlmError::StreamCut(format!("the built-in model failed: {e}"))));
    }

    fn sample(&mut self) -> Result<u32, crate::LocalError> {
        let logits = self.state.logits();
        let logits = Tensor::from_slice(logits, logits.len(), &Device::Cpu)?;
        let logits = if self.repeat_penalty == 1.0 || self.generated.is_empty() {
            logits
        } else {
            let start = self.generated.len().saturating_sub(REPEAT_WINDOW);
            candle_transformers::utils::apply_repeat_penalty(&logits, self.repeat_penalty, &self.generated[start..])?
        };
        Ok(self.logits.sample(&logits)?)
    }

    fn finish(&mut self, reason: &str) {
        let _ = self.tx.send(Ok(StreamEvent::Usage {
            prompt_tokens: self.prompt.len() as u32,
            completion_tokens: self.generated.len() as u32,
        }));
        let _ = self.tx.send(Ok(StreamEvent::Done {
            finish_reason: Some(reason.into()),
        }));
    }
}
