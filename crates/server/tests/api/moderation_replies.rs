//! Content rules on bot replies as they stream: a blocked word is never relayed and cuts the generation,
//! a masked word is masked before it is relayed, and the same holds for `send_stream` and
//! `ai_chatbot_replies`.

use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider, Reply};
use confab_llm::{ProviderConfig, ProviderKind};
use confab_moderation::{PolicyConfig, RuleAction, RuleConfig};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sendbird::{error_of, sb};

const WAIT: Duration = Duration::from_secs(10);

fn rules() -> PolicyConfig {
    let rule = |name: &str, word: &str, action, reason: &str| RuleConfig {
        name: name.into(),
        words: vec![word.into()],
        patterns: vec![],
        action,
        reason: reason.into(),
    };
    PolicyConfig {
        rules: vec![
            rule("clean", "darn", RuleAction::Block, "Keep it clean."),
            rule("mild", "heck", RuleAction::Mask, ""),
        ],
        max_links: None,
    }
}

/// A server with the rules above and one bot, `helper`, on the fake provider.
async fn app_with(fake: &FakeProvider) -> TestApp {
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("fake-model".into());
    p.max_retries = 0;
    p.circuit_failure_threshold = 0;
    let app = spawn_app_with(|c| {
        c.providers = vec![p];
        c.moderation = rules();
        c.bot_runtime.save_interval_ms = 20;
    })
    .await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "helper", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    app
}

async fn last_message(app: &TestApp, token: &str, channel: &str) -> Value {
    let (s, h) = app
        .call("GET", &format!("/api/v1/channels/{channel}/messages"), token, None)
        .await;
    assert_eq!(s, 200, "{h}");
    h["messages"].as_array().unwrap().last().unwrap().clone()
}

#[tokio::test]
async fn a_reply_is_cut_before_a_blocked_word_and_its_generation_stops() {
    let fake = FakeProvider::start().await;
    // "darn" arrives split over two chunks ("s da", "rn g"); much more would follow.
    let text = format!("The answer is darn good, {}", "and then it goes on. ".repeat(20));
    fake.set_default(Behaviour::Success(
        Reply::new(text).chunk_chars(4).delay(Duration::from_millis(15)),
    ));
    let app = app_with(&fake).await;
    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "helper").await;
    let mut ws = app.ws(&alice, json!({})).await;
    app.send_as(&alice, &cid, "what is the answer?").await;

    let seen = follow_streamed_reply(&mut ws, "helper", WAIT).await;
    assert!(
        "The answer is ".starts_with(&seen.streamed) && !seen.streamed.is_empty(),
        "members saw only what came before the blocked word: {:?}",
        seen.streamed
    );
    assert_eq!(seen.fin["reply"]["state"], "failed", "{}", seen.fin);
    assert_eq!(seen.fin["reply"]["reason"], "moderation: Keep it clean.");
    assert_eq!(seen.fin["text"], "The answer is");

    // The provider's stream was closed long before its end.
    assert!(
        fake.wait_for_disconnects(1, WAIT).await,
        "the upstream stream was not cut"
    );
    let last = last_message(&app, &alice, &cid).await;
    assert_eq!(
        (last["text"].as_str(), last["reply"]["state"].as_str()),
        (Some("The answer is"), Some("failed"))
    );
}

#[tokio::test]
async fn a_masked_word_in_a_reply_is_masked_live_and_in_history() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(Reply::new("Well heck, that works.").chunk_chars(4)));
    let app = app_with(&fake).await;
    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "helper").await;
    let mut ws = app.ws(&alice, json!({})).await;
    app.send_as(&alice, &cid, "does it work?").await;

    let seen = follow_streamed_reply(&mut ws, "helper", WAIT).await;
    assert_eq!(seen.streamed, "Well ****, that works.");
    assert!(seen.deltas > 1, "it still streams");
    assert_eq!(seen.fin["reply"]["state"], "complete");
    assert_eq!(seen.fin["text"], "Well ****, that works.");
    let last = last_message(&app, &alice, &cid).await;
    assert_eq!(last["text"], "Well ****, that works.");
}

#[tokio::test]
async fn send_stream_stops_at_a_blocked_word_with_a_sendbird_error() {
    let fake = FakeProvider::start().await;
    let app = app_with(&fake).await;
    let alice = app.user("alice").await;
    app.group("room", &["alice", "helper"]).await;
    let body = r#"{"message": "Once ", "channel_url": "room"}{"message_delta": "upon a "}{"message_delta": "darn time"}{"message_delta": " and more."}"#;
    let r = app
        .http
        .post(app.url("/v3/bots/helper/send_stream"))
        .header("Api-Token", MASTER)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_of(status, &v), (400, 400700));
    assert_eq!(v["message"], "Keep it clean.");
    let last = last_message(&app, &alice, "room").await;
    assert_eq!(
        (
            last["text"].as_str(),
            last["reply"]["state"].as_str(),
            last["reply"]["reason"].as_str()
        ),
        (Some("Once upon a"), Some("failed"), Some("moderation: Keep it clean."))
    );
}

#[tokio::test]
async fn ai_chatbot_replies_never_return_blocked_text() {
    let fake = FakeProvider::start().await;
    let answer = "Sure: it is a darn fine platform, and more.";
    fake.set_default(Behaviour::Success(Reply::new(answer).chunk_chars(4)));
    let app = app_with(&fake).await;
    let conversation = json!({"messages": [{"role": "user", "content": "Is it good?"}]});

    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/helper/ai_chatbot_replies",
        Some(conversation.clone()),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400700));
    assert_eq!(v["message"], "Keep it clean.");
    assert!(!v.to_string().contains("Sure"), "no text of the answer: {v}");

    // As SSE: the text before the blocked word, then an error event.
    let r = app
        .http
        .post(app.url("/v3/bots/helper/ai_chatbot_replies"))
        .header("Api-Token", MASTER)
        .header("Accept", "text/event-stream")
        .json(&conversation)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("darn"), "{text}");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: String = events.iter().filter_map(|e| e["message_delta"].as_str()).collect();
    assert!("Sure: it is a ".starts_with(&deltas), "{deltas:?}");
    assert!(text.contains("event: error"), "{text}");
    let last = events.last().unwrap();
    assert_eq!(
        (last["code"].as_u64(), last["message"].as_str()),
        (Some(400700), Some("Keep it clean."))
    );
}
