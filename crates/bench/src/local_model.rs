//! `local-model`: the built-in model (candle, in this process) beside llama.cpp's `llama-server` on the same
//! GGUF and thread count, both driven through Confab's own provider interface (`confab-llm`): the built-in
//! provider, and the `openai_compatible` adapter pointed at llama-server.
//!
//! Per engine: one warm-up answer; then `--runs` single conversations (time to first token, prompt
//! processing tokens/s = prompt tokens / TTFT, generation tokens/s = (completion tokens - 1) / (last token -
//! first token)); then `--concurrent` conversations at once (aggregate generation tokens/s = all completion
//! tokens / wall time, TTFT of each). Greedy sampling on both (temperature 0). Threads: `CANDLE_NUM_THREADS`
//! (default: all cores) for candle, and the same number as llama-server's `-t`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use confab_llm::{ChatMessage, ChatRequest, LlmProvider, ProviderConfig, ProviderKind, StreamEvent};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args, Debug)]
pub struct LocalModelArgs {
    /// The GGUF model (default: models/ or target/test-models/ SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    /// llama.cpp's llama-server for the comparison (default: target/test-models/llama-server when built by
    /// scripts/test-models.sh); "none" measures the built-in model alone.
    #[arg(long)]
    llama_server: Option<String>,
    /// Generated tokens per answer, at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Single-conversation runs per engine (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Conversations at once in the concurrent phase (0: none).
    #[arg(long, default_value_t = 4)]
    concurrent: u32,
    #[arg(
        long,
        default_value = "Write a long story about a lighthouse keeper who finds a message in a bottle."
    )]
    prompt: String,
}

fn threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn find(explicit: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        root.join("models").join(name),
        root.join("target/test-models").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// One answer, measured at the client.
#[derive(Debug, Clone)]
struct Answer {
    ttft: Duration,
    /// First token → last token.
    generation: Duration,
    prompt_tokens: u32,
    completion_tokens: u32,
    text: String,
}

impl Answer {
    fn gen_tps(&self) -> f64 {
        let secs = self.generation.as_secs_f64();
        if self.completion_tokens < 2 || secs <= 0.0 {
            return 0.0;
        }
        (self.completion_tokens - 1) as f64 / secs
    }

    fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.ttft.as_secs_f64().max(1e-9)
    }
}

async fn answer(p: &dyn LlmProvider, prompt: &str, max_tokens: u32) -> Result<Answer> {
    let mut req = ChatRequest::new(vec![ChatMessage::user(prompt)], max_tokens);
    req.system = Some("You are a helpful assistant.".into());
    req.temperature = Some(0.0);
    let started = Instant::now();
    let mut stream = p.stream(req).await?;
    let (mut first, mut last, mut text, mut usage, mut deltas) = (None, started, String::new(), None, 0u32);
    while let Some(ev) = stream.next().await {
        match ev? {
            StreamEvent::Delta(d) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                deltas += 1;
                text.push_str(&d);
            }
            StreamEvent::Usage {
                prompt_tokens,
                completion_tokens,
            } => usage = Some((prompt_tokens, completion_tokens)),
            StreamEvent::Done { .. } => break,
        }
    }
    let first = first.context("no token was generated")?;
    let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, deltas));
    Ok(Answer {
        ttft: first - started,
        generation: last - first,
        prompt_tokens,
        completion_tokens,
        text,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Measures one engine: warm-up, single runs, concurrent runs.
async fn measure(p: Arc<dyn LlmProvider>, a: &LocalModelArgs, label: &str) -> Result<Value> {
    eprintln!("local-model: {label}: warm-up");
    answer(&*p, &a.prompt, a.max_tokens).await?;
    let mut singles = Vec::new();
    for i in 0..a.runs {
        let r = answer(&*p, &a.prompt, a.max_tokens).await?;
        eprintln!(
            "local-model: {label}: run {}: ttft {:.1} ms, {} prompt tokens, {} generated at {:.1} tokens/s",
            i + 1,
            r.ttft.as_secs_f64() * 1e3,
            r.prompt_tokens,
            r.completion_tokens,
            r.gen_tps()
        );
        singles.push(r);
    }
    let mut out = json!({
        "single_runs": singles.len(),
        "generation_tokens_per_sec": round(median(singles.iter().map(Answer::gen_tps).collect())),
        "prompt_tokens_per_sec": round(median(singles.iter().map(Answer::prompt_tps).collect())),
        "ttft_ms": round(median(singles.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect())),
        "prompt_tokens": singles.first().map(|r| r.prompt_tokens),
        "completion_tokens": singles.iter().map(|r| r.completion_tokens).collect::<Vec<_>>(),
        "sample": singles.first().map(|r| r.text.chars().take(160).collect::<String>()),
    });
    if a.concurrent > 0 {
        let started = Instant::now();
        let runs = (0..a.concurrent).map(|_| {
            let p = p.clone();
            let prompt = a.prompt.clone();
            let max = a.max_tokens;
            tokio::spawn(async move { answer(&*p, &prompt, max).await })
        });
        let mut all = Vec::new();
        for r in futures_util::future::join_all(runs).await {
            all.push(r??);
        }
        let wall = started.elapsed().as_secs_f64();
        let tokens: u32 = all.iter().map(|r| r.completion_tokens).sum();
        let ttfts: Vec<f64> = all.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
        eprintln!(
            "local-model: {label}: {} at once: {tokens} tokens in {wall:.2} s ({:.1} tokens/s), ttft max {:.0} ms",
            a.concurrent,
            tokens as f64 / wall,
            ttfts.iter().cloned().fold(0.0, f64::max)
        );
        let o = out.as_object_mut().expect("object");
        o.insert("concurrent".into(), json!(a.concurrent));
        o.insert("concurrent_tokens_per_sec".into(), json!(round(tokens as f64 / wall)));
        o.insert("concurrent_ttft_ms_median".into(), json!(round(median(ttfts.clone()))));
        o.insert(
            "concurrent_ttft_ms_max".into(),
            json!(round(ttfts.iter().cloned().fold(0.0, f64::max))),
        );
    }
    Ok(out)
}

/// A llama-server child process, killed on drop.
struct LlamaServer {
    child: Child,
    port: u16,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_llama(bin: &Path, model: &Path, threads: usize, parallel: u32) -> Result<LlamaServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-m"])
        .arg(model)
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args([
            "--parallel",
            &parallel.max(1).to_string(),
            "-c",
            &(2048 * parallel.max(1)).to_string(),
        ])
        .args(["--seed", "42", "--no-webui"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = LlamaServer { child, port };
    let port = server.port;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("llama-server exited early ({status})");
        }
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/health")).send().await
            && r.status().is_success()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("llama-server not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(a: &LocalModelArgs, out: &mut Map<String, Value>) -> Result<()> {
    let model = find(a.model.as_deref(), GGUF_NAME)
        .context("no model: pass --model, or run scripts/fetch-model.sh (or scripts/test-models.sh)")?;
    let threads = threads();
    out.insert("model".into(), json!(model.display().to_string()));
    out.insert("threads".into(), json!(threads));
    out.insert("max_tokens".into(), json!(a.max_tokens));

    let mut cfg = ProviderConfig::new("builtin", ProviderKind::Builtin);
    cfg.model_path = Some(model.to_string_lossy().into_owned());
    cfg.max_active = a.concurrent.max(1) as usize;
    cfg.repeat_penalty = 1.0; // as llama-server's default: the same work per token
    let loading = Instant::now();
    let builtin: Arc<dyn LlmProvider> = Arc::new(confab_llm_local::BuiltinProvider::from_config(&cfg)?);
    out.insert("builtin_load_ms".into(), json!(loading.elapsed().as_millis() as u64));
    let mine = measure(builtin.clone(), a, "built-in (candle)").await?;
    drop(builtin);
    out.insert("builtin".into(), mine.clone());

    let llama_bin = match a.llama_server.as_deref() {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => find(None, "llama-server"),
    };
    let Some(bin) = llama_bin else {
        eprintln!("local-model: no llama-server (scripts/test-models.sh builds one); built-in model only");
        return Ok(());
    };
    let server = start_llama(&bin, &model, threads, a.concurrent).await?;
    let mut lcfg = ProviderConfig::new("llama-server", ProviderKind::OpenAiCompatible);
    lcfg.base_url = Some(format!("http://127.0.0.1:{}/v1", server.port));
    lcfg.model = Some("smollm2".into());
    lcfg.max_retries = 0;
    lcfg.first_token_timeout_ms = 120_000;
    let llama: Arc<dyn LlmProvider> = confab_llm::build_provider(&lcfg, &|_| None)?;
    let theirs = measure(llama, a, "llama.cpp (llama-server)").await?;
    drop(server);
    let ratio = |k: &str| {
        let (m, t) = (mine[k].as_f64().unwrap_or(0.0), theirs[k].as_f64().unwrap_or(0.0));
        if t > 0.0 { round(m / t) } else { 0.0 }
    };
    out.insert("generation_ratio".into(), json!(ratio("generation_tokens_per_sec")));
    out.insert("prompt_ratio".into(), json!(ratio("prompt_tokens_per_sec")));
    out.insert("concurrent_ratio".into(), json!(ratio("concurrent_tokens_per_sec")));
    out.insert("llama_server".into(), theirs.clone());
    eprintln!(
        "local-model: generation {:.2}x llama.cpp (target >= 0.7), prompt processing {:.2}x",
        ratio("generation_tokens_per_sec"),
        ratio("prompt_tokens_per_sec")
    );
    Ok(())
}
