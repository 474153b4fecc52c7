//! The built-in model against the real SmolLM2-135M-Instruct GGUF (`scripts/test-models.sh` or
//! `scripts/fetch-model.sh` fetch it). Without the file these tests print why they skip and pass, unless
//! `CONFAB_REQUIRE_MODELS=1` (as in CI) makes a missing file a failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_transformers::models::quantized_llama::ModelWeights;
use confab_llm::{ChatMessage, ChatRequest, LlmError, LlmProvider, ProviderConfig, ProviderKind, StreamEvent};
use confab_llm_local::llama::{Scratch, State};
use confab_llm_local::tokenizer::ChatTokenizer;
use confab_llm_local::{BuiltinProvider, LoadedModel};
use futures_util::StreamExt;

#[path = "../../server/tests/api/helpers/skip.rs"]
mod skip;

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn gguf() -> Option<PathBuf> {
    let path = std::env::var_os("CONFAB_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CONFAB_TEST_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models"))
                .join(GGUF_NAME)
        });
    if path.is_file() {
        return Some(path);
    }
    skip::skip_unless_required(
        "CONFAB_REQUIRE_MODELS",
        &format!("no model at {}", path.display()),
        "scripts/test-models.sh --model-only (or set CONFAB_TEST_GGUF)",
    );
    None
}

/// The model, loaded once for the tests that only read it (each test without it says it skips).
fn loaded() -> Option<&'static LoadedModel> {
    let path = gguf()?;
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    Some(MODEL.get_or_init(|| confab_llm_local::load(&path).expect("the model loads")))
}

fn provider(path: &Path, max_active: usize, max_queue: usize) -> BuiltinProvider {
    let mut cfg = ProviderConfig::new("builtin", ProviderKind::Builtin);
    cfg.model_path = Some(path.to_string_lossy().into_owned());
    cfg.max_active = max_active;
    cfg.max_queue = max_queue;
    cfg.seed = Some(42);
    BuiltinProvider::from_config(&cfg).expect("the provider starts")
}

fn ask(question: &str, max_tokens: u32) -> ChatRequest {
    let mut req = ChatRequest::new(vec![ChatMessage::user(question)], max_tokens);
    req.system = Some("You are a helpful assistant. Answer briefly.".into());
    req.temperature = Some(0.2);
    req
}

#[test]
fn the_tokenizer_matches_the_vocabulary_and_llama_cpp() {
    let Some(m) = loaded() else { return };
    let t: &ChatTokenizer = &m.tokenizer;
    // Ids as llama.cpp's own tokenizer gives them for this file (llama-server /tokenize, no special parsing).
    let cases: [(&str, &[u32]); 5] = [
        ("Hello world", &[19556, 905]),
        (
            "The capital of France is Paris.",
            &[504, 3575, 282, 4649, 314, 7042, 30],
        ),
        (
            "x = 12345; y=3.14",
            &[104, 446, 216, 33, 34, 35, 36, 37, 43, 329, 45, 35, 30, 33, 36],
        ),
        ("naïve café 🙂", &[3546, 46494, 37366, 47526]),
        // Typed by a user, a control token's text stays text.
        ("<|im_end|>", &[44, 108, 306, 79, 486, 108, 46]),
    ];
    for (text, ids) in cases {
        assert_eq!(t.encode_text(text).unwrap(), ids, "{text:?}");
        assert_eq!(t.decode(ids).unwrap(), text);
    }
    // In the template's own text, control tokens are single ids.
    assert_eq!(
        t.encode_template("<|im_start|>user\nHi<|im_end|>\n").unwrap(),
        [1, 4093, 198, 26843, 2, 198]
    );
    assert_eq!(t.stop_ids(), [0, 2], "<|endoftext|> and <|im_end|> end a turn");
}

#[test]
fn the_chat_template_renders_chatml_and_round_trips() {
    let Some(m) = loaded() else { return };
    let messages = [
        ChatMessage::user("What is 2+2?"),
        ChatMessage::assistant("4."),
        ChatMessage::user("And <|im_end|> 3+3?"),
    ];
    let p = m.tokenizer.prompt(Some("Be brief."), &messages).unwrap();
    assert_eq!(
        p.text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd <|im_end|> 3+3?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(m.tokenizer.decode(&p.ids).unwrap(), p.text, "exact round trip");
    let im_end = 2;
    assert_eq!(
        p.ids.iter().filter(|&&id| id == im_end).count(),
        4,
        "the user's typed <|im_end|> is not a control token"
    );
    // Without a system prompt the model's template adds its own.
    let p = m.tokenizer.prompt(None, &messages[..1]).unwrap();
    assert!(p.text.starts_with("<|im_start|>system\n"), "{}", p.text);
}

/// The `n` likeliest tokens with their log-probabilities.
fn top_logprobs(logits: &[f32], n: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    let mut v: Vec<(usize, f32)> = logits.iter().enumerate().map(|(i, x)| (i, x - lse)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    v
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// Our forward pass against candle's reference implementation of the same architecture on the same file.
#[test]
fn logits_match_candles_llama_implementation() {
    let Some(m) = loaded() else { return };
    let path = gguf().expect("found by loaded()");
    let prompt = m
        .tokenizer
        .prompt(None, &[ChatMessage::user("What is the capital of France?")])
        .unwrap();
    let mut state = State::new(&m.model);
    m.model.forward(&prompt.ids, &mut state).unwrap();
    let ours = state.logits().to_vec();

    let device = candle_core::Device::Cpu;
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(ct, &mut f, &device).unwrap();
    let input = candle_core::Tensor::new(prompt.ids.as_slice(), &device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let theirs: Vec<f32> = reference
        .forward(&input, 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();

    // Both quantize activations to 8 bits before each product, with different rounding details; llama.cpp
    // differs from each by as much (top log-probabilities within about 0.2 on this model).
    let close = |a: &[f32], b: &[f32]| {
        let (ta, tb) = (top_logprobs(a, 3), top_logprobs(b, 3));
        eprintln!("ours {ta:?}\ncandle {tb:?}");
        let set = |t: &[(usize, f32)]| t.iter().map(|t| t.0).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(ta[0].0, tb[0].0, "the same likeliest token");
        assert_eq!(set(&ta), set(&tb), "the same three likeliest tokens");
        assert!((ta[0].1 - tb[0].1).abs() < 0.15, "{ta:?} vs {tb:?}");
    };
    close(&ours, &theirs);
    // One decoding step further, through the KV caches of both.
    let next = argmax(&ours) as u32;
    m.model.forward(&[next], &mut state).unwrap();
    let input = candle_core::Tensor::new(&[next], &device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let theirs: Vec<f32> = reference
        .forward(&input, prompt.ids.len())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    close(state.logits(), &theirs);
}

/// Several conversations in one step give what each gives alone.
#[test]
fn a_batch_of_conversations_equals_each_alone() {
    let Some(m) = loaded() else { return };
    let a = m.tokenizer.encode_text("Once upon a time").unwrap();
    let b = m.tokenizer.encode_text("The capital of France is").unwrap();
    let (mut sa, mut sb) = (State::new(&m.model), State::new(&m.model));
    let mut scratch = Scratch::default();
    m.model
        .forward_batch(&mut [(&a[..], &mut sa), (&b[..], &mut sb)], &mut scratch)
        .unwrap();
    // A decoding step for one and a longer chunk for the other, together.
    m.model
        .forward_batch(&mut [(&[42][..], &mut sa), (&b[..2], &mut sb)], &mut scratch)
        .unwrap();
    let (mut alone_a, mut alone_b) = (State::new(&m.model), State::new(&m.model));
    m.model.forward(&a, &mut alone_a).unwrap();
    m.model.forward(&[42], &mut alone_a).unwrap();
    m.model.forward(&b, &mut alone_b).unwrap();
    m.model.forward(&b[..2], &mut alone_b).unwrap();
    assert_eq!(sa.logits(), alone_a.logits());
    assert_eq!(sb.logits(), alone_b.logits());
    assert_eq!((sa.len, sb.len), (a.len() + 1, b.len() + 2));
}

/// A prompt run as one batch gives what it gives token by token.
#[test]
fn batched_prompts_equal_token_by_token() {
    let Some(m) = loaded() else { return };
    let ids = m
        .tokenizer
        .encode_text("The quick brown fox jumps over the lazy dog, twice.")
        .unwrap();
    let mut batch = State::new(&m.model);
    m.model.forward(&ids, &mut batch).unwrap();
    let mut single = State::new(&m.model);
    for id in &ids {
        m.model.forward(&[*id], &mut single).unwrap();
    }
    assert_eq!(batch.logits(), single.logits());
    assert_eq!(batch.len, ids.len());
}

#[tokio::test]
async fn a_seeded_answer_streams_and_stops_at_the_end_of_turn() {
    let Some(path) = gguf() else { return };
    let p = provider(&path, 1, 4);
    let mut stream = p.stream(ask("What is the capital of France?", 64)).await.unwrap();
    let (mut text, mut deltas, mut usage, mut done) = (String::new(), 0, None, None);
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("a token within 2 minutes")
    {
        match ev.unwrap() {
            StreamEvent::Delta(d) => {
                deltas += 1;
                text.push_str(&d);
            }
            StreamEvent::Usage {
                prompt_tokens,
                completion_tokens,
            } => usage = Some((prompt_tokens, completion_tokens)),
            StreamEvent::Done { finish_reason } => done = Some(finish_reason),
        }
    }
    assert!(!text.trim().is_empty());
    assert!(text.contains("Paris"), "{text:?}");
    assert!(deltas > 1, "streamed token by token");
    assert_eq!(
        done,
        Some(Some("stop".into())),
        "ended by <|im_end|>, not the token cap: {text:?}"
    );
    let (prompt, completion) = usage.expect("usage");
    assert!(
        prompt > 10 && completion as usize >= deltas,
        "{prompt} {completion} {deltas}"
    );
    assert!(!text.contains("<|im_end|>"));

    // The same seed gives the same answer, also when two conversations are generated in one batch.
    let (x, y) = tokio::join!(
        confab_llm::collect(p.stream(ask("What is the capital of France?", 64)).await.unwrap()),
        confab_llm::collect(p.stream(ask("What is the capital of France?", 64)).await.unwrap()),
    );
    assert_eq!((x.text.as_str(), y.text.as_str()), (text.as_str(), text.as_str()));
}

#[tokio::test]
async fn a_dropped_stream_stops_within_one_token_and_a_full_queue_refuses() {
    let Some(path) = gguf() else { return };
    let p = Arc::new(provider(&path, 1, 1));
    let long = || ask("Write a long story about a dragon and a knight.", 400);
    let mut first = p.stream(long()).await.unwrap();
    assert!(matches!(first.next().await, Some(Ok(StreamEvent::Delta(_)))));
    // One generating, one waiting: a third is refused at once.
    let second = p.stream(long()).await.unwrap();
    assert!(matches!(p.stream(long()).await, Err(LlmError::Overloaded)));
    drop(second); // stopped while queued: never generates
    for _ in 0..3 {
        assert!(matches!(first.next().await, Some(Ok(StreamEvent::Delta(_)))));
    }
    drop(first);
    let at_drop = p.engine().generated_tokens();
    while p.engine().active() > 0 || p.engine().queued() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = p.engine().generated_tokens();
    assert!(after - at_drop <= 1, "{} tokens after the stop", after - at_drop);
}
