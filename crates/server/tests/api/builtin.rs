//! The zero-configuration bot: the built-in model (SmolLM2-135M-Instruct, run in process) answering as the
//! default bot `assistant`, with nothing configured but the model file.
//!
//! Needs the GGUF (`scripts/test-models.sh --model-only`, or `CONFAB_TEST_GGUF`); without it the test prints
//! why it skips and passes, unless `CONFAB_REQUIRE_MODELS=1` (as in CI).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

fn gguf() -> Result<PathBuf, String> {
    let path = std::env::var_os("CONFAB_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CONFAB_TEST_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models"))
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("no model at {}", path.display()))
    }
}

#[tokio::test]
async fn the_default_assistant_answers_with_the_builtin_model() {
    let model = match gguf() {
        Ok(p) => p,
        Err(why) => {
            let remedy = "scripts/test-models.sh --model-only (or set CONFAB_TEST_GGUF)";
            skip_unless_required("CONFAB_REQUIRE_MODELS", &why, remedy);
            return;
        }
    };
    let app = spawn_app_with(|c| {
        c.builtin.enabled = true;
        c.builtin.model_path = model;
    })
    .await;
    // Nothing configured: the provider and the bot exist.
    let (_, providers) = app.admin("GET", "/api/v1/providers", None).await;
    let builtin = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "builtin")
        .cloned()
        .unwrap_or_else(|| panic!("{providers}"));
    assert_eq!(
        (builtin["kind"].as_str(), builtin["available"].as_bool()),
        (Some("builtin"), Some(true))
    );
    let (s, bot) = app.admin("GET", "/api/v1/bots/assistant", None).await;
    assert_eq!(
        (s, bot["settings"]["provider"].as_str()),
        (200, Some("builtin")),
        "{bot}"
    );

    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "assistant").await;
    let mut ws = app.ws(&alice, json!({})).await;
    let sent_at = Instant::now();
    send_json(
        &mut ws,
        json!({"type": "send", "req_id": "1", "channel_id": cid, "text": "What is the capital of France?"}),
    )
    .await;
    let StreamedReply {
        streamed, deltas, fin, ..
    } = follow_streamed_reply(&mut ws, "assistant", Duration::from_secs(90)).await;
    let text = fin["text"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "builtin reply after {:.2?} in {deltas} deltas: {text:?}",
        sent_at.elapsed()
    );
    assert_eq!(fin["reply"]["state"], "complete", "{fin}");
    assert!(deltas > 1, "streamed token by token");
    assert!(!text.trim().is_empty());
    assert_eq!(text, streamed);
    // Real token counts reach the usage records.
    let (_, usage) = app.admin("GET", "/api/v1/usage?bot_id=assistant", None).await;
    let u = &usage["usage"][0];
    assert!(
        u["prompt_tokens"].as_u64() > Some(10) && u["completion_tokens"].as_u64() > Some(0),
        "{usage}"
    );
}
