//! The official Sendbird Platform SDK for Python (`sendbird-platform-sdk==2.1.5`, unchanged) against the live
//! server: `tests/sendbird_sdk/platform_sdk_check.py` creates users, channels, messages and bots through it
//! and asserts on every answer. Needs a Python with the SDK installed, named by `CONFAB_SENDBIRD_SDK_PYTHON`
//! (`.ci/run` makes a virtualenv under `target/`); skipped with a printed reason elsewhere, unless
//! `CONFAB_REQUIRE_SENDBIRD_SDK=1` makes its absence a failure.

use std::process::Command;

use confab_llm::fake::{Behaviour, FakeProvider};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn official_sendbird_python_sdk_runs_unchanged() {
    let Some(python) = std::env::var_os("CONFAB_SENDBIRD_SDK_PYTHON") else {
        skip_unless_required(
            "CONFAB_REQUIRE_SENDBIRD_SDK",
            "CONFAB_SENDBIRD_SDK_PYTHON is not set",
            "python3 -m venv target/sendbird-sdk-venv && target/sendbird-sdk-venv/bin/pip install \
             sendbird-platform-sdk==2.1.5, then set CONFAB_SENDBIRD_SDK_PYTHON=$PWD/target/sendbird-sdk-venv/bin/python \
             (as .ci/run does)",
        );
        return;
    };
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("Hello from the AI bot."));
    let mut provider = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    provider.base_url = Some(fake.openai_base_url());
    provider.model = Some("fake-model".into());
    let app = spawn_app_with(|c| {
        c.providers = vec![provider];
        c.limits.user_send_burst = 100;
    })
    .await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "sdk_ai", "nickname": "AI", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sendbird_sdk/platform_sdk_check.py");
    let host = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SENDBIRD_HOST", host)
            .env("SENDBIRD_API_TOKEN", MASTER)
            .env("AI_BOT_ID", "sdk_ai")
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the SDK script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("sendbird-platform-sdk 2.1.5 ok"), "{stdout}");
}
