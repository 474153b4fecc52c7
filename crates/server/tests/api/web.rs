//! The web app in a real browser: headless Chromium (Debian's package) driven by playwright-core runs
//! `web/e2e/chat.e2e.mjs` against this server with a fake LLM provider. Screenshots are kept under
//! `target/e2e-artifacts`. Skipped, with the reason printed, where Chromium is not installed, unless
//! CONFAB_REQUIRE_BROWSER=1 (as `.ci/run` sets).

use std::path::PathBuf;
use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider, Reply};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::json;

use crate::helpers::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.exists() {
        return Some(path);
    }
    skip_unless_required(
        "CONFAB_REQUIRE_BROWSER",
        &format!("no Chromium at {}", path.display()),
        "apt-get install chromium (or set CHROMIUM to a Chromium binary)",
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_end_to_end_in_chromium() {
    let Some(browser) = chromium() else { return };
    let fake = FakeProvider::start().await;
    // Slow enough to watch it grow and press Stop: ~140 chunks, 120 ms apart.
    let story = "Once upon a time, in a server far away, a small bot learned to stream its words one by one, \
                 so that every reader could follow along as the story unfolded, sentence after sentence, \
                 until somebody pressed the button that asked it to stop.";
    // The first reply streams slowly and is stopped; the second fails (a refusal no retry mends); the third
    // (the 1:1 conversation) never ends on its own and is cut at the bot's length limit (512 tokens).
    fake.script(vec![
        Behaviour::Success(
            Reply::new(story.repeat(2))
                .chunk_chars(3)
                .delay(Duration::from_millis(120)),
        ),
        Behaviour::status(400),
        Behaviour::Endless(Reply::new("Fine. ".repeat(20)).chunk_chars(120)),
    ]);
    fake.set_default(Behaviour::success("Fine."));
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("fake-model".into());
    let app = spawn_app_with(|c| {
        c.providers = vec![p];
        c.limits.user_send_burst = 100;
        c.bot_runtime.save_interval_ms = 50;
        c.web.dev_login = true;
    })
    .await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "helper", "nickname": "Helper", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let artifacts = target.join("e2e-artifacts");
    let status = tokio::process::Command::new("node")
        .arg(repo_root().join("web/e2e/chat.e2e.mjs"))
        .current_dir(repo_root())
        .env("CONFAB_URL", app.url(""))
        .env("CONFAB_MASTER", MASTER)
        .env("CONFAB_ARTIFACTS", &artifacts)
        .env("CHROMIUM", &browser)
        .env("CONFAB_EXPECT_FAILURE", "1")
        .env("CONFAB_EXPECT_DEV_LOGIN", "1")
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(240), status)
        .await
        .expect("the browser test finishes within 4 minutes")
        .expect("node runs");
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots in {}",
        artifacts.display()
    );
}

/// The web app and the development login: served by the binary; the login only with the flag.
#[tokio::test]
async fn the_binary_serves_the_web_app_and_the_dev_login_only_when_asked() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let js = app.http.get(app.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    let off: serde_json::Value = app
        .http
        .get(app.url("/api/v1/dev/login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(off["enabled"], false);
    let r = app
        .http
        .post(app.url("/api/v1/dev/login"))
        .json(&json!({"user_id": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, _) = app.admin("GET", "/api/v1/users/mallory", None).await;
    assert_eq!(s, 404, "nobody was created");

    let app = spawn_app_with(|c| c.web.dev_login = true).await;
    let login = |body: serde_json::Value| {
        let (http, url) = (app.http.clone(), app.url("/api/v1/dev/login"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (s, v) = login(json!({"user_id": "newcomer", "nickname": "New"})).await;
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let (s, me) = app.call("GET", "/api/v1/me", &token, None).await;
    assert_eq!(
        (s, me["id"].as_str(), me["nickname"].as_str()),
        (200, Some("newcomer"), Some("New"))
    );
    let (s, _) = login(json!({"user_id": "newcomer"})).await;
    assert_eq!(s, 201, "an existing user signs in again");
    app.admin("POST", "/api/v1/users", Some(json!({"id": "robot", "is_bot": true})))
        .await;
    let (s, v) = login(json!({"user_id": "robot"})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = login(json!({"user_id": "bad id!"})).await;
    assert_eq!(s, 400, "{v}");
}
