//! The pre-send webhook: the application's endpoint sees each message before it is stored (signed as
//! Standard Webhooks says) and allows, rejects or modifies it; a hook that misses its budget allows or
//! refuses as configured.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sendbird::{error_of, sb};
use crate::webhook_outbox::verify;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An endpoint that decides by the message's text; returns its URL and the messages it saw.
pub(crate) async fn hook_endpoint() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/check",
        axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
            let log = log.clone();
            async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                if !verify(
                    SECRET,
                    &h("webhook-id"),
                    &h("webhook-timestamp"),
                    &h("webhook-signature"),
                    &raw,
                ) {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
                }
                let body: Value = serde_json::from_slice(&raw).unwrap();
                let text = body["data"]["message"]["text"].as_str().unwrap_or("").to_string();
                log.lock().unwrap().push(body);
                let answer = if text.contains("forbidden") {
                    json!({"action": "reject", "code": "no_secrets", "reason": "Secrets stay secret."})
                } else if text.contains("rewrite") {
                    json!({"action": "modify", "text": "rewritten by the app", "data": {"checked": true}})
                } else if text.contains("slow") {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    json!({"action": "allow"})
                } else if text.contains("garbage") {
                    json!({"action": "shrug"})
                } else {
                    json!({"action": "allow"})
                };
                (StatusCode::OK, axum::Json(answer))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/check"), seen)
}

pub(crate) async fn app_with_hook(url: &str, fail_open: bool) -> TestApp {
    let url = url.to_string();
    spawn_app_with(move |c| {
        c.egress.allow_private = vec!["127.0.0.1".into()];
        c.pre_send_webhook.url = url;
        c.pre_send_webhook.secret = SECRET.into();
        c.pre_send_webhook.timeout_ms = 300;
        c.pre_send_webhook.fail_open = fail_open;
    })
    .await
}

async fn send(app: &TestApp, token: &str, text: &str) -> (u16, Value) {
    app.call(
        "POST",
        "/api/v1/channels/g/messages",
        token,
        Some(json!({ "text": text })),
    )
    .await
}

#[tokio::test]
async fn the_pre_send_webhook_allows_rejects_and_modifies() {
    let (url, seen) = hook_endpoint().await;
    let app = app_with_hook(&url, true).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;

    let (s, v) = send(&app, &alice, "hello there").await;
    assert_eq!((s, v["text"].as_str()), (201, Some("hello there")), "{v}");
    let asked = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked["type"], "message.pre_send");
    assert_eq!(asked["data"]["message"]["sender_id"], "alice");
    assert_eq!(asked["data"]["message"]["channel_id"], "g");

    let (s, v) = send(&app, &alice, "a forbidden word").await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("Secrets stay secret."), "{v}");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/g/messages",
        Some(json!({"message_type": "MESG", "user_id": "alice", "message": "forbidden again"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400700));

    let (s, v) = send(&app, &alice, "please rewrite this").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["text"], "rewritten by the app");
    assert_eq!(v["data"], json!({"checked": true}));

    // Past the budget, or an answer it cannot read: fail-open stores the message as sent.
    let (s, v) = send(&app, &alice, "a slow one").await;
    assert_eq!((s, v["text"].as_str()), (201, Some("a slow one")), "{v}");
    let (s, _) = send(&app, &alice, "garbage answer").await;
    assert_eq!(s, 201);

    // Refused messages were never stored.
    let (_, h) = app.call("GET", "/api/v1/channels/g/messages", &alice, None).await;
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["hello there", "rewritten by the app", "a slow one", "garbage answer"]
    );
}

#[tokio::test]
async fn a_failing_pre_send_webhook_refuses_when_it_fails_closed() {
    let (url, _seen) = hook_endpoint().await;
    let app = app_with_hook(&url, false).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    assert_eq!(send(&app, &alice, "fine").await.0, 201);
    let (s, v) = send(&app, &alice, "a slow one").await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("could not be checked"), "{v}");
    assert_eq!(send(&app, &alice, "garbage answer").await.0, 422);

    // An endpoint that is down is a failure too.
    let app = app_with_hook("http://127.0.0.1:9/check", false).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    assert_eq!(send(&app, &alice, "anyone there?").await.0, 422);
}

#[tokio::test]
async fn a_pre_send_webhook_on_a_private_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = confab::Config {
        data_dir: dir.path().to_path_buf(),
        ..confab::Config::default()
    };
    config.builtin.enabled = false;
    config.pre_send_webhook.url = "http://10.0.0.1/check".into();
    config.pre_send_webhook.secret = SECRET.into();
    let err = confab::App::build(config, MASTER).await.err().expect("refused");
    assert!(err.to_string().contains("pre_send_webhook.url"), "{err}");
}

async fn app_with_llm_check(fake: &confab_llm::fake::FakeProvider, fail_open: bool) -> TestApp {
    let mut p = confab_llm::ProviderConfig::new("judge", confab_llm::ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("judge-model".into());
    spawn_app_with(move |c| {
        c.providers = vec![p];
        c.moderation_llm.provider = "judge".into();
        c.moderation_llm.timeout_ms = 500;
        c.moderation_llm.fail_open = fail_open;
    })
    .await
}

/// The LLM check: the provider's one-line verdict allows, flags or blocks; the message reaches the provider
/// as a user turn, not in the instructions; a provider that stalls past the budget allows or refuses as
/// configured.
#[tokio::test]
async fn the_llm_check_allows_flags_and_blocks() {
    use confab_llm::fake::{Behaviour, FakeProvider};
    let fake = FakeProvider::start().await;
    fake.script(vec![
        Behaviour::success("ALLOW"),
        Behaviour::success("FLAG: unkind tone"),
        Behaviour::success("BLOCK: spam."),
        Behaviour::hang(Duration::from_secs(5)),
        Behaviour::success("Sure! Here is a poem."),
    ]);
    let app = app_with_llm_check(&fake, true).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;

    let (s, v) = send(&app, &alice, "good morning").await;
    assert_eq!(s, 201, "{v}");
    let (s, flagged) = send(&app, &alice, "you again").await;
    assert_eq!(s, 201, "{flagged}");
    let (s, v) = send(&app, &alice, "cheap pills here").await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("This message was not posted: spam."), "{v}");
    let (s, v) = send(&app, &alice, "stalled judge").await;
    assert_eq!(s, 201, "fail-open: {v}");
    let (s, v) = send(&app, &alice, "rambling judge").await;
    assert_eq!(s, 201, "an unreadable verdict fails open too: {v}");

    let asked = &fake.requests()[0];
    let turns = asked.messages();
    assert_eq!(turns.last().unwrap(), &("user".to_string(), "good morning".to_string()));
    assert!(
        turns
            .iter()
            .filter(|(role, _)| role == "system")
            .all(|(_, t)| !t.contains("good morning"))
    );

    let (_, v) = app.admin("GET", "/api/v1/moderation/flags", None).await;
    let flags = v["flagged"].as_array().unwrap();
    assert_eq!(flags.len(), 1, "{v}");
    assert_eq!(flags[0]["message"]["id"], flagged["id"]);
    assert_eq!(flags[0]["rules"], json!(["llm"]));

    let closed = FakeProvider::start().await;
    closed.set_default(Behaviour::hang(Duration::from_secs(5)));
    let app = app_with_llm_check(&closed, false).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let (s, v) = send(&app, &alice, "anyone judging?").await;
    assert_eq!(s, 422, "fail-closed: {v}");
}
