//! A provider that streams without end: the reply ends at the bot's `max_output_tokens` (enforced locally)
//! or at the server's byte cap, once, `complete` with the reason `length`, on every surface that shows
//! reply states (native REST and WebSocket, Sendbird's `data`); the upstream stream is closed.

use std::time::Duration;

use confab_llm::ProviderKind;
use confab_llm::fake::{Behaviour, FakeProvider};
use serde_json::{Value, json};

use crate::bots::{create_bot, provider};
use crate::helpers::*;
use crate::sendbird::sb;

async fn endless_app(fake: &FakeProvider, max_reply_bytes: usize) -> TestApp {
    fake.set_default(Behaviour::endless("and on "));
    let p = provider("fake", ProviderKind::OpenAiCompatible, fake);
    spawn_app_with(move |c| {
        c.providers = vec![p];
        c.bot_runtime.save_interval_ms = 20;
        c.bot_runtime.max_reply_bytes = max_reply_bytes;
    })
    .await
}

/// Asks the bot in the group `g`; returns the reply as streamed and its final state, after checking that
/// nothing more of it follows (alice's next message arrives with no further change to it).
async fn ask(app: &TestApp, alice: &str, ch: &str, ws: &mut Ws) -> (StreamedReply, i64) {
    app.send_as(alice, ch, "@bot tell me everything").await;
    let reply = follow_streamed_reply(ws, "bot", Duration::from_secs(10)).await;
    let id = reply.fin["id"].as_i64().unwrap();
    app.send_as(alice, ch, "thanks").await;
    loop {
        let f = next_json_within(ws, Duration::from_secs(10)).await;
        assert!(
            f["message"]["id"] != id && f["message_id"] != id,
            "the reply changed after its final state: {f}"
        );
        if f["type"] == "message.new" && f["message"]["text"] == "thanks" {
            break;
        }
    }
    (reply, id)
}

fn sendbird_data(v: &Value) -> Value {
    serde_json::from_str(v["data"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn an_endless_stream_ends_at_the_bots_token_limit() {
    let fake = FakeProvider::start().await;
    let app = endless_app(&fake, 64 * 1024).await;
    create_bot(&app, "bot", json!({"provider": "fake", "max_output_tokens": 40})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "bot"]).await;
    let ch = "g";
    let mut ws = app.ws(&alice, json!({})).await;

    let (reply, id) = ask(&app, &alice, ch, &mut ws).await;
    let fin = &reply.fin;
    assert_eq!(
        (fin["reply"]["state"].as_str(), fin["reply"]["reason"].as_str()),
        (Some("complete"), Some("length")),
        "{fin}"
    );
    // 40 tokens at most five characters each, counted locally: the provider never said stop.
    assert_eq!(fin["text"].as_str().unwrap().chars().count(), 200, "{fin}");
    assert_eq!(reply.streamed, fin["text"].as_str().unwrap());
    assert!(
        fake.wait_for_disconnects(1, Duration::from_secs(10)).await,
        "the upstream stream was closed"
    );

    let (s, m) = app.call("GET", &format!("/api/v1/messages/{id}"), &alice, None).await;
    assert_eq!((s, &m["reply"]), (200, &fin["reply"]), "{m}");
    let (s, v) = sb(&app, "GET", &format!("/v3/group_channels/{ch}/messages/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    let data = sendbird_data(&v);
    assert_eq!(
        (data["reply_state"].as_str(), data["reason"].as_str()),
        (Some("complete"), Some("length")),
        "{v}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn an_endless_stream_ends_at_the_byte_cap() {
    let fake = FakeProvider::start().await;
    let app = endless_app(&fake, 100).await;
    create_bot(&app, "bot", json!({"provider": "fake", "max_output_tokens": 32768})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "bot"]).await;
    let ch = "g";
    let mut ws = app.ws(&alice, json!({})).await;

    let (reply, _) = ask(&app, &alice, ch, &mut ws).await;
    let fin = &reply.fin;
    assert_eq!(
        (fin["reply"]["state"].as_str(), fin["reply"]["reason"].as_str()),
        (Some("complete"), Some("length")),
        "{fin}"
    );
    assert_eq!(fin["text"].as_str().unwrap().len(), 100, "{fin}");
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(10)).await);
}
