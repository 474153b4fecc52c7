//! Bots end to end: a real server, WebSocket clients, and a faithful fake LLM provider on loopback.

use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider, Reply};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::{Value, json};

use crate::helpers::*;

pub(crate) fn provider(name: &str, kind: ProviderKind, fake: &FakeProvider) -> ProviderConfig {
    let mut p = ProviderConfig::new(name, kind);
    p.base_url = Some(match kind {
        ProviderKind::Anthropic => fake.base_url(),
        _ => fake.openai_base_url(),
    });
    p.model = Some("fake-model".into());
    p.first_token_timeout_ms = 2_000;
    p.max_retries = 1;
    p.retry_base_delay_ms = 10;
    p.circuit_failure_threshold = 0;
    p
}

pub(crate) async fn app_with(providers: Vec<ProviderConfig>) -> TestApp {
    spawn_app_with(|c| {
        c.providers = providers;
        c.limits.user_send_burst = 100;
        c.bot_runtime.save_interval_ms = 20;
        // Providers added through the admin API point at the fake on loopback.
        c.egress.allow_private = vec!["127.0.0.1".into()];
    })
    .await
}

pub(crate) async fn create_bot(app: &TestApp, id: &str, settings: Value) {
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": id, "nickname": "Helper", "settings": settings})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["is_bot"], true);
}

/// Collects a reply's frames until its final `message.updated`; returns (deltas joined, final message).
async fn follow_reply(ws: &mut Ws, bot: &str) -> (String, Value, Vec<u64>) {
    let created = loop {
        let f = next_of_type(ws, "message.new").await;
        if f["message"]["sender_id"] == bot {
            break f;
        }
    };
    assert_eq!(created["message"]["reply"]["state"], "generating", "{created}");
    let id = created["message"]["id"].as_i64().unwrap();
    let mut text = String::new();
    let mut offsets = Vec::new();
    loop {
        let f = next_json(ws).await;
        match f["type"].as_str().unwrap() {
            "message.delta" if f["message_id"] == id => {
                offsets.push(f["offset"].as_u64().unwrap());
                assert_eq!(
                    f["offset"].as_u64().unwrap() as usize,
                    text.len(),
                    "deltas arrive in order"
                );
                text.push_str(f["delta"].as_str().unwrap());
            }
            "message.updated" if f["message"]["id"] == id => {
                let state = f["message"]["reply"]["state"].as_str().unwrap().to_string();
                if state != "generating" {
                    return (text, f["message"].clone(), offsets);
                }
            }
            _ => {}
        }
    }
}

/// Waits until `n` replies of `bot` are final; returns their final messages in the order they finished.
pub(crate) async fn finished_replies(ws: &mut Ws, bot: &str, n: usize) -> Vec<Value> {
    let mut done = Vec::new();
    while done.len() < n {
        let f = next_json(ws).await;
        if f["type"] == "message.updated"
            && f["message"]["sender_id"] == bot
            && f["message"]["reply"]["state"] != "generating"
        {
            done.push(f["message"].clone());
        }
    }
    done
}

#[tokio::test]
async fn a_direct_message_to_a_bot_streams_a_complete_reply() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("Hello there, how can I help?")
            .chunk_chars(4)
            .delay(Duration::from_millis(5)),
    ));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(
        &app,
        "helper",
        json!({"provider": "fake", "system_prompt": "Be kind.", "topic": "support"}),
    )
    .await;
    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "helper").await;
    let mut ws = app.ws(&alice, json!({})).await;
    send_json(
        &mut ws,
        json!({"type": "send", "req_id": "1", "channel_id": cid, "text": "hi bot"}),
    )
    .await;

    let (streamed, fin, offsets) = follow_reply(&mut ws, "helper").await;
    assert!(offsets.len() > 1, "streamed in several deltas");
    assert_eq!(streamed, "Hello there, how can I help?");
    assert_eq!(fin["text"], streamed);
    assert_eq!(fin["reply"]["state"], "complete");
    // The provider saw the system prompt with the topic, and the user's text as a user turn.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let body = &reqs[0].body;
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["stream"], true);
    assert!(body["max_tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][0]["content"].as_str().unwrap().contains("support"));
    assert_eq!(
        body["messages"].as_array().unwrap().last().unwrap()["content"],
        "hi bot"
    );

    // History shows the finished reply; usage was recorded.
    let (_, h) = app
        .call("GET", &format!("/api/v1/channels/{cid}/messages"), &alice, None)
        .await;
    let last = h["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["text"].as_str(), last["reply"]["state"].as_str()),
        (Some(streamed.as_str()), Some("complete"))
    );
    let (_, usage) = app.admin("GET", "/api/v1/usage?bot_id=helper", None).await;
    assert_eq!(usage["usage"][0]["replies"], 1, "{usage}");
    assert!(usage["usage"][0]["completion_tokens"].as_u64().unwrap() > 0);

    // Metrics: behind the master token, with the bot path's histograms and counters.
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "confab_bot_replies_total",
        "confab_llm_time_to_first_token_seconds",
        "confab_bot_overhead_seconds",
        "confab_bot_relay_seconds",
        "confab_llm_tokens_total",
        "confab_ws_sessions",
    ] {
        assert!(text.contains(name), "missing {name} in metrics");
    }
}

#[tokio::test]
async fn groups_trigger_on_mentions_only_and_bots_never_trigger_bots() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("Sure."));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(&app, "helper", json!({"provider": "fake"})).await;
    create_bot(&app, "other", json!({"provider": "fake"})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "helper", "other"]).await;
    app.group("secret", &["alice"]).await;
    app.send_as(&alice, "secret", "the password is swordfish").await;
    let mut ws = app.ws(&alice, json!({})).await;

    let chatting = app.send_as(&alice, "g", "just chatting").await["id"].as_i64().unwrap();
    app.send_as(&alice, "g", "hey @helper what's up").await;
    let (_, fin, _) = follow_reply(&mut ws, "helper").await;
    assert_eq!(fin["reply"]["state"], "complete");
    let mut quiet = vec![chatting, fin["id"].as_i64().unwrap()];
    // Mention list works too.
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/channels/g/messages",
            &alice,
            Some(json!({"text": "question", "mentions": ["other"]})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, fin, _) = follow_reply(&mut ws, "other").await;
    assert_eq!(fin["reply"]["state"], "complete");
    quiet.push(fin["id"].as_i64().unwrap());
    // The runtime takes g's messages in commit order and shows a reply (in g's order) before calling the
    // provider: by the end of a later trigger's reply, a reply to any earlier message would have shown.
    let last = app.send_as(&alice, "g", "@helper one more").await["id"]
        .as_i64()
        .unwrap();
    let fin = reply_to(&mut ws, "helper", last, &[], &quiet).await;
    assert_eq!(fin["reply"]["state"], "complete");
    // Three triggers, three calls: "just chatting" triggered nothing, and the replies (which do not mention
    // anyone, but are bot messages) triggered nothing either.
    assert_eq!(fake.request_count(), 3);
    for r in fake.requests() {
        assert!(
            !r.text().contains("swordfish"),
            "another channel's text reached the provider"
        );
    }
}

#[tokio::test]
async fn stop_ends_the_reply_and_closes_the_upstream_stream() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("one two three four five six seven eight nine ten".repeat(5))
            .chunk_chars(3)
            .delay(Duration::from_millis(40)),
    ));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(&app, "helper", json!({"provider": "fake"})).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob", "helper"]).await;
    let mut wa = app.ws(&alice, json!({})).await;
    let mut wb = app.ws(&bob, json!({})).await;
    app.send_as(&alice, "g", "@helper count").await;

    let created = loop {
        let f = next_of_type(&mut wb, "message.new").await;
        if f["message"]["sender_id"] == "helper" {
            break f;
        }
    };
    let id = created["message"]["id"].as_i64().unwrap();
    // Wait for some text, then bob stops it.
    let _ = next_of_type(&mut wb, "message.delta").await;
    send_json(&mut wb, json!({"type": "stop", "message_id": id})).await;
    assert!(
        fake.wait_for_disconnects(1, Duration::from_secs(2)).await,
        "upstream stream not closed"
    );

    let (_, fin, _) = follow_reply(&mut wa, "helper").await;
    assert_eq!(fin["reply"]["state"], "stopped");
    let partial = fin["text"].as_str().unwrap();
    assert!(
        !partial.is_empty() && partial.len() < 250,
        "partial text kept: {partial:?}"
    );
    // Stopping again is an error; REST stop of a finished reply too (a state conflict, not bad input).
    let (s, v) = app
        .call("POST", &format!("/api/v1/messages/{id}/stop"), &alice, None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
}

#[tokio::test]
async fn failures_fallbacks_and_cut_streams_end_in_one_final_state() {
    let primary = FakeProvider::start().await;
    let backup = FakeProvider::start().await;
    backup.set_default(Behaviour::success("From the backup."));
    backup.require_key(Some("test-anthropic-key"));
    // SAFETY: set once, before the server reads it; no test reads or writes it concurrently.
    unsafe { std::env::set_var("CONFAB_TEST_ANTHROPIC_KEY", "test-anthropic-key") };
    let mut anthropic = provider("backup", ProviderKind::Anthropic, &backup);
    anthropic.api_key_env = Some("CONFAB_TEST_ANTHROPIC_KEY".into());
    let app = app_with(vec![
        provider("primary", ProviderKind::OpenAiCompatible, &primary),
        anthropic,
    ])
    .await;
    create_bot(&app, "solo", json!({"provider": "primary"})).await;
    create_bot(&app, "chain", json!({"provider": "primary", "fallbacks": ["backup"]})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "solo", "chain"]).await;
    let mut ws = app.ws(&alice, json!({})).await;

    // 500 twice (first attempt and its retry): the bot alone fails with a reason.
    primary.script(vec![Behaviour::server_error(), Behaviour::server_error()]);
    app.send_as(&alice, "g", "@solo hi").await;
    let (_, fin, _) = follow_reply(&mut ws, "solo").await;
    assert_eq!(fin["reply"]["state"], "failed");
    assert!(!fin["reply"]["reason"].as_str().unwrap().is_empty());

    // With a fallback, the backup (Anthropic wire format) answers.
    primary.script(vec![Behaviour::server_error(), Behaviour::server_error()]);
    app.send_as(&alice, "g", "@chain hi").await;
    let (text, fin, _) = follow_reply(&mut ws, "chain").await;
    assert_eq!(
        (fin["reply"]["state"].as_str(), text.as_str()),
        (Some("complete"), "From the backup.")
    );

    // Cut mid-stream after some text: interrupted, partial text kept, no second reply.
    primary.script(vec![Behaviour::cut_after("partial answer that never ends", 2)]);
    app.send_as(&alice, "g", "@solo again").await;
    let (text, fin, _) = follow_reply(&mut ws, "solo").await;
    assert_eq!(fin["reply"]["state"], "interrupted");
    assert_eq!(fin["text"], text);
    assert!(!text.is_empty());

    // Hang before the first byte: failed after the first-token timeout.
    primary.script(vec![
        Behaviour::hang(Duration::from_secs(10)),
        Behaviour::hang(Duration::from_secs(10)),
    ]);
    app.send_as(&alice, "g", "@solo are you there").await;
    let (_, fin, _) = follow_reply(&mut ws, "solo").await;
    assert_eq!(fin["reply"]["state"], "failed");
}

#[tokio::test]
async fn budgets_and_concurrency_caps_hold() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("ok ok ok ok")
            .chunk_chars(2)
            .delay(Duration::from_millis(30)),
    ));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(
        &app,
        "frugal",
        json!({"provider": "fake", "user_daily_tokens": 700, "max_output_tokens": 64}),
    )
    .await;
    create_bot(&app, "busy", json!({"provider": "fake", "max_concurrent": 2})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "frugal", "busy"]).await;
    let mut ws = app.ws(&alice, json!({})).await;

    // The first reply fits the budget; once spent, the next trigger fails without calling the provider.
    let mut states = Vec::new();
    for i in 0..12 {
        app.send_as(&alice, "g", &format!("@frugal q{i}")).await;
        let (_, fin, _) = follow_reply(&mut ws, "frugal").await;
        let state = fin["reply"]["state"].as_str().unwrap().to_string();
        states.push(state.clone());
        if state == "failed" {
            assert!(fin["reply"]["reason"].as_str().unwrap().contains("budget"), "{fin}");
            break;
        }
    }
    assert_eq!(states.first().map(String::as_str), Some("complete"));
    assert_eq!(states.last().map(String::as_str), Some("failed"), "{states:?}");
    let calls = fake.request_count();
    assert_eq!(calls, states.len() - 1, "no call once the budget is spent");

    // Five triggers at once to a bot capped at two concurrent replies.
    for i in 0..5 {
        app.send_as(&alice, "g", &format!("@busy task {i}")).await;
    }
    for fin in finished_replies(&mut ws, "busy", 5).await {
        assert_eq!(fin["reply"]["state"], "complete");
    }
    assert!(
        fake.max_concurrent() <= 2,
        "provider saw {} at once",
        fake.max_concurrent()
    );
}

#[tokio::test]
async fn bots_are_managed_through_the_api() {
    let fake = FakeProvider::start().await;
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "b1", "settings": {"provider": "nope"}})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_argument")));
    create_bot(&app, "b1", json!({"provider": "fake", "temperature": 0.2})).await;
    let (s, v) = app
        .admin(
            "PATCH",
            "/api/v1/bots/b1",
            Some(json!({"nickname": "Bee", "settings": {"provider": "fake", "max_output_tokens": 99}})),
        )
        .await;
    assert_eq!(
        (s, v["nickname"].as_str(), v["settings"]["max_output_tokens"].as_u64()),
        (200, Some("Bee"), Some(99))
    );
    let (_, list) = app.admin("GET", "/api/v1/bots", None).await;
    assert_eq!(list["bots"].as_array().unwrap().len(), 1);
    let alice = app.user("alice").await;
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/bots",
            &alice,
            Some(json!({"id": "b2", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app.admin("DELETE", "/api/v1/bots/b1", None).await;
    assert_eq!(s, 204);
    let (s, _) = app.admin("GET", "/api/v1/bots/b1", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn providers_are_managed_through_the_api_without_secrets() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("Via an API provider."));
    let app = app_with(vec![provider("filed", ProviderKind::OpenAiCompatible, &fake)]).await;
    // SAFETY: set once before use; no other test touches this variable.
    unsafe { std::env::set_var("CONFAB_PROVIDER_KEY_TEST_API", "sk-secret-value-123") };
    let cfg = json!({"name": "dynamic", "kind": "openai_compatible", "base_url": fake.openai_base_url(),
                     "model": "m", "api_key_env": "CONFAB_PROVIDER_KEY_TEST_API"});
    let (s, v) = app.admin("POST", "/api/v1/providers", Some(cfg)).await;
    assert_eq!((s, v["name"].as_str()), (201, Some("dynamic")));
    // A raw key is refused (keys live in the environment), and so is replacing a configuration-file provider.
    let (s, _) = app
        .admin(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "x", "kind": "openai", "model": "m", "api_key": "sk-raw"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .admin("POST", "/api/v1/providers", Some(json!({"name": "filed", "kind": "openai_compatible", "base_url": "http://127.0.0.1:1/v1", "model": "m"})))
        .await;
    assert_eq!(s, 403);
    let (_, list) = app.admin("GET", "/api/v1/providers", None).await;
    let text = list.to_string();
    assert!(!text.contains("sk-secret-value-123"), "a secret leaked: {text}");
    assert_eq!(list["providers"].as_array().unwrap().len(), 2);
    assert!(text.contains("\"api_key_set\":true"));

    // A bot on the API-added provider answers; the key went in the header.
    create_bot(&app, "dyn", json!({"provider": "dynamic"})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "dyn"]).await;
    let mut ws = app.ws(&alice, json!({})).await;
    app.send_as(&alice, "g", "@dyn hello").await;
    let (text, fin, _) = follow_reply(&mut ws, "dyn").await;
    assert_eq!(
        (fin["reply"]["state"].as_str(), text.as_str()),
        (Some("complete"), "Via an API provider.")
    );
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some("Bearer sk-secret-value-123")
    );

    let (s, _) = app.admin("DELETE", "/api/v1/providers/dynamic", None).await;
    assert_eq!(s, 204);
    let (s, _) = app.admin("DELETE", "/api/v1/providers/filed", None).await;
    assert_eq!(s, 403);
}

/// The upstream call starts while the trigger commits; still the reply comes after the stored trigger, a
/// retried send (same client id) calls the provider no second time, and a non-member never reaches it.
#[tokio::test]
async fn early_started_replies_follow_their_trigger_and_retries_call_no_provider() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("Early bird.").chunk_chars(3).delay(Duration::from_millis(5)),
    ));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(&app, "early", json!({"provider": "fake"})).await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let cid = app.direct_with(&alice, "early").await;
    let mut ws = app.ws(&alice, json!({})).await;
    let send = json!({"type": "send", "req_id": "1", "channel_id": cid, "text": "hello", "client_msg_id": "m-1"});
    send_json(&mut ws, send.clone()).await;
    let first = next_of_type(&mut ws, "message.new").await;
    assert_eq!(
        first["message"]["sender_id"], "alice",
        "the trigger is shown first: {first}"
    );
    let (text, fin, _) = follow_reply(&mut ws, "early").await;
    assert_eq!(
        (text.as_str(), fin["reply"]["state"].as_str()),
        ("Early bird.", Some("complete"))
    );
    assert!(fin["seq"].as_u64() > first["seq"].as_u64(), "{fin} after {first}");

    // The retry gets the original back; no provider call, no second reply.
    send_json(&mut ws, send).await;
    let ack = next_of_type(&mut ws, "ack").await;
    assert_eq!(
        (ack["duplicate"].as_bool(), &ack["message_id"]),
        (Some(true), &first["message"]["id"])
    );
    // A non-member's send is refused before anything reaches the provider.
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/channels/{cid}/messages"),
            &mallory,
            Some(json!({"text": "@early leak the chat"})),
        )
        .await;
    assert!(s == 403 || s == 404, "{s} {v}");
    // An early start opens its provider call while the send commits, and a later trigger's reply ends only
    // after its own call: by then a call for the retry (or for mallory) would have been made.
    let next = app.send_as(&alice, &cid, "and again").await["id"].as_i64().unwrap();
    let first_id = first["message"]["id"].as_i64().unwrap();
    let fin = reply_to(&mut ws, "early", next, &[], &[first_id]).await;
    assert_eq!(fin["reply"]["state"], "complete");
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        2,
        "only the original trigger and the later one called the provider"
    );
    assert!(requests[1].text().contains("and again"));
    let (_, h) = app
        .call("GET", &format!("/api/v1/channels/{cid}/messages"), &alice, None)
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 4, "{h}");
}

/// A user's client lists bots (to mention them) by their profiles; only the application sees their settings.
#[tokio::test]
async fn users_see_bot_profiles_without_their_settings() {
    let fake = FakeProvider::start().await;
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(
        &app,
        "helper",
        json!({"provider": "fake", "system_prompt": "secret instructions"}),
    )
    .await;
    let alice = app.user("alice").await;
    let (s, v) = app.call("GET", "/api/v1/bots", &alice, None).await;
    assert_eq!(s, 200, "{v}");
    let listed = v["bots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "helper")
        .unwrap()
        .clone();
    assert_eq!(listed["nickname"], "Helper");
    assert!(listed.get("settings").is_none(), "{listed}");
    let (_, v) = app.call("GET", "/api/v1/bots/helper", &alice, None).await;
    assert!(!v.to_string().contains("secret instructions"), "{v}");
    let (_, v) = app.admin("GET", "/api/v1/bots/helper", None).await;
    assert_eq!(v["settings"]["system_prompt"], "secret instructions");
}
