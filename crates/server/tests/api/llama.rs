//! A real LLM end to end: llama.cpp's `llama-server` serving SmolLM2-135M-Instruct on loopback, a Confab
//! bot on an `openai_compatible` provider pointed at it, and a user talking to the bot over WebSocket.
//!
//! Needs `scripts/test-models.sh` (builds llama-server and fetches the GGUF into `target/test-models/`),
//! or `CONFAB_LLAMA_SERVER` and `CONFAB_TEST_GGUF` naming them. Without them the test prints why it skips
//! and passes, unless `CONFAB_REQUIRE_MODELS=1` (as in CI) makes a missing binary or model a failure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::json;

use crate::helpers::*;

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Loading the model takes about a second; this leaves room for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for one WebSocket frame while the model generates.
const FRAME_TIMEOUT: Duration = Duration::from_secs(90);

/// The llama-server binary and the model, from the environment or the `scripts/test-models.sh` cache.
fn locate() -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os("CONFAB_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models"));
    let server = std::env::var_os("CONFAB_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("llama-server"));
    let model = std::env::var_os("CONFAB_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(GGUF_NAME));
    for (what, path) in [("llama-server", &server), ("model", &model)] {
        if !path.is_file() {
            return Err(format!("no {what} at {}", path.display()));
        }
    }
    Ok((server, model))
}

/// A running llama-server; killed (and reaped) on drop, whatever the test's outcome.
struct LlamaServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    fn spawn(server: &Path, model: &Path) -> LlamaServer {
        // A free loopback port: bound by us, released, then handed to llama-server (a small race that
        // `wait_ready` would report as an early exit).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("llama-server.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(server)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("-m")
            .arg(model)
            .args(["--ctx-size", "2048", "-t", "2", "--parallel", "1"])
            // Deterministic: a fixed seed, greedy sampling by default (the request sends temperature 0 too).
            .args(["--seed", "42", "--temp", "0"])
            .arg("--no-webui")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        LlamaServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/health` until it answers 200 (503 while the model loads).
    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("llama-server exited early ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_bot_on_a_real_llama_server_streams_a_complete_reply() {
    let (server, model) = match locate() {
        Ok(found) => found,
        Err(why) => {
            let remedy = "scripts/test-models.sh (or set CONFAB_LLAMA_SERVER and CONFAB_TEST_GGUF)";
            skip_unless_required("CONFAB_REQUIRE_MODELS", &why, remedy);
            return;
        }
    };
    let started = Instant::now();
    let mut llama = LlamaServer::spawn(&server, &model);
    llama.wait_ready().await;
    let ready_in = started.elapsed();

    let mut provider = ProviderConfig::new("llama", ProviderKind::OpenAiCompatible);
    provider.base_url = Some(llama.base_url());
    provider.model = Some("smollm2".into()); // llama-server serves its one model under any name
    provider.first_token_timeout_ms = 60_000;
    provider.idle_timeout_ms = 60_000;
    provider.deadline_ms = 120_000;
    provider.max_retries = 0;
    provider.circuit_failure_threshold = 0;
    let app = spawn_app_with(|c| c.providers = vec![provider]).await;

    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "smol", "nickname": "Smol", "settings": {
                "provider": "llama",
                "system_prompt": "You are a helpful assistant. Answer in one short sentence.",
                "temperature": 0.0,
                "max_output_tokens": 48,
            }})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "smol").await;
    let mut ws = app.ws(&alice, json!({})).await;
    let sent_at = Instant::now();
    send_json(
        &mut ws,
        json!({"type": "send", "req_id": "1", "channel_id": cid, "text": "What is the capital of France?"}),
    )
    .await;

    // The reply appears at once as `generating`, then streams deltas in order, then ends in one update.
    let StreamedReply {
        streamed,
        deltas,
        first_delta,
        fin,
        ..
    } = follow_streamed_reply(&mut ws, "smol", FRAME_TIMEOUT).await;
    let first_delta = first_delta.map(|t| t - sent_at);
    let reply_in = sent_at.elapsed();
    let text = fin["text"].as_str().unwrap_or_default().to_string();
    let first_delta = first_delta.map_or_else(|| "-".to_string(), |d| format!("{d:.2?}"));
    eprintln!(
        "llama-server ready in {ready_in:.2?}; first delta after {first_delta}, reply done after \
         {reply_in:.2?} in {deltas} deltas; reply: {text:?}"
    );
    assert_eq!(
        fin["reply"]["state"],
        "complete",
        "{fin}\nllama-server log:\n{}",
        llama.log_tail()
    );
    assert!(deltas >= 1, "no message.delta frame arrived");
    assert!(!text.trim().is_empty(), "empty reply: {fin}");
    assert_eq!(text, streamed, "the final text is what was streamed");

    // History holds the finished reply.
    let (_, h) = app
        .call("GET", &format!("/api/v1/channels/{cid}/messages"), &alice, None)
        .await;
    let last = h["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["text"].as_str(), last["reply"]["state"].as_str()),
        (Some(text.as_str()), Some("complete"))
    );
    drop(ws);
    drop(app);
    drop(llama);
}
