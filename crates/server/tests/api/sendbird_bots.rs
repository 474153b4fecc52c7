//! Sendbird bots under `/v3/bots`: management, channels, sends, `send_stream`, `ai_chatbot_replies` and bot
//! callbacks, against the real server and a faithful fake LLM provider.

use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider, Reply as FakeReply};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::sendbird::{error_of, sb};
use crate::sendbird_webhooks::{loopback_allowed, next_event, receiver, verify};

async fn app_with_fake(text: &str) -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(FakeReply::new(text).chunk_chars(4)));
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("fake-model".into());
    p.first_token_timeout_ms = 2_000;
    p.max_retries = 0;
    p.circuit_failure_threshold = 0;
    let app = spawn_app_with(|c| {
        c.providers = vec![p];
        c.limits.user_send_burst = 100;
        c.bot_runtime.save_interval_ms = 20;
        loopback_allowed(c);
    })
    .await;
    (app, fake)
}

pub(crate) async fn sb_user(app: &TestApp, id: &str) {
    let (s, v) = sb(
        app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": id, "nickname": id, "profile_url": ""})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

pub(crate) async fn sb_channel(app: &TestApp, url: &str, users: &[&str]) {
    let (s, v) = sb(
        app,
        "POST",
        "/v3/group_channels",
        Some(json!({"channel_url": url, "user_ids": users})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

pub(crate) async fn sb_send(app: &TestApp, url: &str, body: Value) -> Value {
    let (s, v) = sb(app, "POST", &format!("/v3/group_channels/{url}/messages"), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Polls the channel's messages until the last one is `bot`'s, finished; returns it.
async fn finished_bot_message(app: &TestApp, url: &str, bot: &str) -> Value {
    for _ in 0..200 {
        let (_, page) = sb(
            app,
            "GET",
            &format!("/v3/group_channels/{url}/messages?message_ts=9999999999999&prev_limit=5&next_limit=0"),
            None,
        )
        .await;
        if let Some(last) = page["messages"].as_array().and_then(|m| m.last())
            && last["user"]["user_id"] == bot
        {
            let data: Value = serde_json::from_str(last["data"].as_str().unwrap()).unwrap();
            if data["stream"] == false {
                return last.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no finished message of {bot} in {url}");
}

#[tokio::test]
async fn sendbird_bots_are_managed_with_sendbird_codes() {
    let (app, _fake) = app_with_fake("hi").await;
    let body = json!({"bot_userid": "helper", "bot_nickname": "Helper", "bot_profile_url": "", "bot_type": "support",
        "bot_callback_url": "http://127.0.0.1:9/cb", "is_privacy_mode": true});
    let (s, created) = sb(&app, "POST", "/v3/bots", Some(body.clone())).await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["bot"]["bot_userid"], "helper");
    assert_eq!(created["bot"]["bot_type"], "support");
    assert_eq!(created["is_privacy_mode"], true);
    assert_eq!(created["bot_callback_url"], "http://127.0.0.1:9/cb");
    assert!(created["ai"].is_null(), "a callback bot has no ai object: {created}");
    let token = created["bot"]["bot_token"].as_str().unwrap().to_string();
    assert!(token.len() >= 32);

    let (s, v) = sb(&app, "POST", "/v3/bots", Some(body)).await;
    assert_eq!(error_of(s, &v), (400, 400202));
    let (s, v) = sb(&app, "POST", "/v3/bots", Some(json!({"bot_nickname": "x"}))).await;
    assert_eq!(error_of(s, &v), (400, 400105));
    let (s, v) = sb(&app, "POST", "/v3/bots", Some(json!({"bot_userid": "nocb"}))).await;
    assert_eq!(error_of(s, &v), (400, 400105), "no ai and no callback");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "x1", "bot_callback_url": "http://10.0.0.1/cb"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111), "private callback URL");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "x2", "ai": {"provider": "nope"}})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111), "unknown provider");

    let (s, ai) = sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "smart", "bot_nickname": "Smart",
        "ai": {"provider": "fake", "system_prompt": "Be brief.", "temperature": 0.2, "max_tokens": 64}})),
    )
    .await;
    assert_eq!(s, 200, "{ai}");
    assert_eq!(ai["ai"]["system_prompt"], "Be brief.");
    assert_eq!(ai["ai"]["max_tokens"], 64);
    assert_eq!(
        ai["is_privacy_mode"], false,
        "Sendbird's default: every message of its channels"
    );

    let (s, v) = sb(&app, "GET", "/v3/bots/helper", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["bot"]["bot_token"], token.as_str(), "the token is stable");
    let (_, page) = sb(&app, "GET", "/v3/bots?limit=1", None).await;
    assert_eq!(page["bots"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_string();
    assert!(!next.is_empty());
    let (_, page2) = sb(&app, "GET", &format!("/v3/bots?limit=10&token={next}"), None).await;
    let ids: Vec<&str> = page2["bots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bot"]["bot_userid"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&page["bots"][0]["bot"]["bot_userid"].as_str().unwrap()),
        "{ids:?}"
    );

    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/bots/helper",
        Some(json!({"bot_nickname": "Helper 2", "is_privacy_mode": false,
        "show_member": true, "bot_callback_url": "http://127.0.0.1:9/cb2"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bot"]["bot_nickname"], "Helper 2");
    assert_eq!(v["is_privacy_mode"], false);
    assert_eq!(v["show_member"], true);
    assert_eq!(v["bot_callback_url"], "http://127.0.0.1:9/cb2");

    let (s, v) = sb(&app, "GET", "/v3/bots/ghost", None).await;
    assert_eq!(error_of(s, &v), (400, 400201));
    let (s, v) = sb(&app, "DELETE", "/v3/bots/helper", None).await;
    assert_eq!((s, v), (200, json!({})));
    let (s, v) = sb(&app, "GET", "/v3/bots/helper", None).await;
    assert_eq!(error_of(s, &v), (400, 400201));
    let r = app
        .http
        .get(app.url("/v3/bots"))
        .header("Api-Token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 400401);
}

#[tokio::test]
async fn sendbird_ai_bot_replies_in_a_group_channel() {
    let (app, fake) = app_with_fake("Sendbird-style bots answer here.").await;
    for u in ["gu1", "gu2"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "aigroup", &["gu1", "gu2"]).await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "aibot", "bot_nickname": "AI",
        "is_privacy_mode": true, "ai": {"provider": "fake", "system_prompt": "You answer in the group."}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, joined) = sb(
        &app,
        "POST",
        "/v3/bots/aibot/channels",
        Some(json!({"channel_urls": ["aigroup"]})),
    )
    .await;
    assert_eq!(s, 200, "{joined}");
    assert_eq!(joined["channel_url"], "aigroup");
    assert!(
        joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user_id"] == "aibot")
    );

    // Privacy mode: an unmentioned message does not reach the bot; a mention does.
    sb_send(
        &app,
        "aigroup",
        json!({"message_type": "MESG", "user_id": "gu1", "message": "just us"}),
    )
    .await;
    let asked = sb_send(
        &app,
        "aigroup",
        json!({"message_type": "MESG", "user_id": "gu2", "message": "what now?",
        "mention_type": "users", "mentioned_user_ids": ["aibot"]}),
    )
    .await;
    let reply = finished_bot_message(&app, "aigroup", "aibot").await;
    assert_eq!(reply["message"], "Sendbird-style bots answer here.");
    let data: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["reply_state"], "complete");
    assert_eq!(data["respond_mesg_id"], asked["message_id"]);
    assert_eq!(fake.request_count(), 1, "only the mention triggered the bot");
    let req = &fake.requests()[0];
    assert!(req.text().contains("You answer in the group."), "system prompt sent");
    assert!(req.messages().iter().any(|(_, c)| c.contains("what now?")));

    // Privacy mode also lets commands through: a message starting with `/` addresses the bot unmentioned.
    let command = sb_send(
        &app,
        "aigroup",
        json!({"message_type": "MESG", "user_id": "gu1", "message": "/summary please"}),
    )
    .await;
    let reply = finished_bot_message(&app, "aigroup", "aibot").await;
    let data: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["respond_mesg_id"], command["message_id"]);
    assert_eq!(fake.request_count(), 2, "the command triggered the bot");

    // Not in privacy mode: every member message of its channels.
    let (s, v) = sb(&app, "PUT", "/v3/bots/aibot", Some(json!({"is_privacy_mode": false}))).await;
    assert_eq!(s, 200, "{v}");
    sb_send(
        &app,
        "aigroup",
        json!({"message_type": "MESG", "user_id": "gu1", "message": "anyone?"}),
    )
    .await;
    for _ in 0..200 {
        if fake.request_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.request_count(), 3, "an unmentioned message triggered the bot");
    finished_bot_message(&app, "aigroup", "aibot").await;

    let (s, v) = sb(&app, "DELETE", "/v3/bots/aibot/channels/aigroup", None).await;
    assert_eq!((s, v), (200, json!({})));
    let (_, m) = sb(&app, "GET", "/v3/group_channels/aigroup/members/aibot", None).await;
    assert_eq!(m["is_member"], false);
}

#[tokio::test]
async fn sendbird_callback_bots_are_told_and_never_call_a_provider() {
    let (app, fake) = app_with_fake("unused").await;
    let (url, mut rx) = receiver(0).await;
    for u in ["cu1", "cu2"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "cbroom", &["cu1", "cu2"]).await;
    let (s, bot) = sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "cbbot", "bot_nickname": "Callback",
        "bot_callback_url": url, "is_privacy_mode": false, "show_member": true})),
    )
    .await;
    assert_eq!(s, 200, "{bot}");
    let token = bot["bot"]["bot_token"].as_str().unwrap().to_string();
    sb(
        &app,
        "POST",
        "/v3/bots/cbbot/channels",
        Some(json!({"channel_urls": ["cbroom"]})),
    )
    .await;

    let sent = sb_send(
        &app,
        "cbroom",
        json!({"message_type": "MESG", "user_id": "cu1", "message": "hello bot"}),
    )
    .await;
    let cb = next_event(&mut rx, "bot_message_notification").await;
    verify(&cb);
    assert_eq!(cb.body["bot"]["bot_userid"], "cbbot");
    assert_eq!(cb.body["bot"]["bot_token"], token.as_str());
    assert_eq!(cb.body["sender"]["user_id"], "cu1");
    assert_eq!(cb.body["channel"]["channel_url"], "cbroom");
    assert_eq!(cb.body["message"]["text"], "hello bot");
    assert_eq!(cb.body["message"]["message_id"], sent["message_id"]);
    assert_eq!(cb.body["members"].as_array().unwrap().len(), 3);

    // The application answers through the bot: JSON and multipart (CSV lists), idempotent by dedup_id.
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/cbbot/send",
        Some(json!({"channel_url": "cbroom", "message": "hi cu1",
        "mentioned_user_ids": ["cu1"], "dedup_id": "answer-1"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["message"]["user"]["user_id"], "cbbot");
    assert_eq!(v["message"]["mentioned_users"][0]["user_id"], "cu1");
    let first_id = v["message"]["message_id"].clone();
    let (_, again) = sb(
        &app,
        "POST",
        "/v3/bots/cbbot/send",
        Some(json!({"channel_url": "cbroom", "message": "hi cu1",
        "dedup_id": "answer-1"})),
    )
    .await;
    assert_eq!(
        again["message"]["message_id"], first_id,
        "a retried dedup_id returns the original"
    );
    let form = reqwest::multipart::Form::new()
        .text("message_type", "MESG")
        .text("channel_url", "cbroom")
        .text("message", "from a form")
        .text("mentioned_user_ids", "cu1,cu2");
    let r = app
        .http
        .post(app.url("/v3/bots/cbbot/send"))
        .header("api-token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"]["message"], "from a form");
    assert_eq!(v["message"]["mentioned_users"].as_array().unwrap().len(), 2);
    // A FILE message: the `file` part follows `channel_url`, as the Python SDK orders its parts.
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("channel_url", "cbroom")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"menu of the day".to_vec())
                .file_name("menu.txt")
                .mime_str("text/plain")
                .unwrap(),
        );
    let r = app
        .http
        .post(app.url("/v3/bots/cbbot/send"))
        .header("api-token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"]["type"], "FILE", "{v}");
    assert_eq!(v["message"]["user"]["user_id"], "cbbot");
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("channel_url", "cbroom");
    let r = app
        .http
        .post(app.url("/v3/bots/cbbot/send"))
        .header("api-token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        error_of(status, &r.json().await.unwrap()),
        (400, 400105),
        "FILE without a file"
    );
    // Bot messages never trigger bots: no callback for them. The runtime takes messages in commit order and
    // passes a bot's own over as its event arrives, so a callback for them would be announced before this
    // later user message's.
    let later = sb_send(
        &app,
        "cbroom",
        json!({"message_type": "MESG", "user_id": "cu2", "message": "still there?"}),
    )
    .await;
    let cb = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the later message's callback")
        .unwrap();
    assert_eq!(
        cb.body["message"]["message_id"], later["message_id"],
        "a callback for a bot's message: {}",
        cb.body
    );

    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/cbbot/send",
        Some(json!({"message": "no channel"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400105));
    sb_channel(&app, "elsewhere", &["cu1"]).await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/cbbot/send",
        Some(json!({"channel_url": "elsewhere", "message": "x"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400108), "the bot is not a member");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/ghost/send",
        Some(json!({"channel_url": "cbroom", "message": "x"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400201));
    assert_eq!(fake.request_count(), 0, "a callback bot never calls a provider");

    let (s, v) = sb(&app, "DELETE", "/v3/bots/cbbot/channels", None).await;
    assert_eq!((s, v), (200, json!({})));
    let (_, m) = sb(&app, "GET", "/v3/group_channels/cbroom/members/cbbot", None).await;
    assert_eq!(m["is_member"], false);
}

/// Writes a request with a chunked body, one chunk per piece with a pause between; returns the raw response.
async fn chunked_post(app: &TestApp, path: &str, pieces: &[&[u8]]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nApi-Token: {MASTER}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for p in pieces {
        s.write_all(format!("{:x}\r\n", p.len()).as_bytes()).await.unwrap();
        s.write_all(p).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status: u16 = raw[9..12].parse().unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The response itself may be chunked: keep from the first brace to the last.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    (status, serde_json::from_str(json).unwrap())
}

#[tokio::test]
async fn sendbird_send_stream_shows_one_streaming_message() {
    let (app, _fake) = app_with_fake("unused").await;
    sb_user(&app, "su1").await;
    sb_channel(&app, "streamy", &["su1"]).await;
    sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "streamer", "bot_callback_url": "http://127.0.0.1:9/cb"})),
    )
    .await;
    sb(
        &app,
        "POST",
        "/v3/bots/streamer/channels",
        Some(json!({"channel_urls": ["streamy"]})),
    )
    .await;
    let asked = sb_send(
        &app,
        "streamy",
        json!({"message_type": "MESG", "user_id": "su1", "message": "tell me"}),
    )
    .await;
    let (_, tok) = sb(&app, "POST", "/v3/users/su1/token", None).await;
    let mut ws = app.ws(tok["token"].as_str().unwrap(), json!({})).await;

    let first = format!(
        r#"{{"message": "Once ", "channel_url": "streamy", "target_message_id": "{}"}}"#,
        asked["message_id"]
    );
    // Chunks cut objects anywhere, as a generator feeding `requests` does not align them.
    let body = format!(r#"{first}{{"message_delta": "upon "}}{{"message_delta": "a time."}}"#);
    let bytes = body.as_bytes();
    let pieces: Vec<&[u8]> = vec![
        &bytes[..10],
        &bytes[10..first.len() + 7],
        &bytes[first.len() + 7..first.len() + 30],
        &bytes[first.len() + 30..],
    ];
    let (status, v) = chunked_post(&app, "/v3/bots/streamer/send_stream", &pieces).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["message"]["message"], "Once upon a time.");
    let data: Value = serde_json::from_str(v["message"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["reply_state"], "complete");
    assert_eq!(data["stream"], false);
    assert_eq!(data["respond_mesg_id"], asked["message_id"]);

    let seen = follow_streamed_reply(&mut ws, "streamer", Duration::from_secs(5)).await;
    assert_eq!(seen.streamed, "Once upon a time.");
    assert!(seen.deltas >= 2, "members saw it stream: {} deltas", seen.deltas);
    assert_eq!(seen.fin["reply"]["state"], "complete");

    // A body that ends inside an object: the message ends `interrupted` with what arrived.
    let cut = br#"{"message": "Half", "channel_url": "streamy"}{"message_delta": " a sen"#;
    let (status, v) = chunked_post(&app, "/v3/bots/streamer/send_stream", &[&cut[..]]).await;
    assert_eq!(error_of(status, &v), (400, 400403));
    let last = finished_bot_message(&app, "streamy", "streamer").await;
    assert_eq!(last["message"], "Half");
    let data: Value = serde_json::from_str(last["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["reply_state"], "interrupted");

    // The uploader goes away mid-stream: the message still ends, `interrupted`, with what arrived.
    {
        let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v3/bots/streamer/send_stream HTTP/1.1\r\nHost: x\r\nApi-Token: {MASTER}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let piece = br#"{"message": "Gone", "channel_url": "streamy"}{"message_delta": " soon"}"#;
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        sock.write_all(piece).await.unwrap();
        sock.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = finished_bot_message(&app, "streamy", "streamer").await;
    assert_eq!(last["message"], "Gone soon");
    let data: Value = serde_json::from_str(last["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["reply_state"], "interrupted", "{data}");

    // Nothing is stored for a stream whose first object is unusable.
    let (status, v) = chunked_post(&app, "/v3/bots/streamer/send_stream", &[br#"{"message": "x"}"#]).await;
    assert_eq!(error_of(status, &v), (400, 400105));
    let (status, v) = chunked_post(
        &app,
        "/v3/bots/streamer/send_stream",
        &[br#"{"message": "x", "channel_url": "nowhere"}"#],
    )
    .await;
    assert_eq!(error_of(status, &v), (400, 400201));
}

#[tokio::test]
async fn sendbird_ai_chatbot_replies_as_the_seed_describes() {
    let (app, fake) = app_with_fake("Sendbird is a chat platform.").await;
    sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "ai", "ai": {"provider": "fake", "system_prompt": "You know Sendbird."}})),
    )
    .await;
    let conversation = json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi, how can I help you?"},
        {"role": "user", "content": "Tell me about Sendbird."}]);

    for streaming in [json!(false), Value::Null] {
        let mut body = json!({"messages": conversation});
        if !streaming.is_null() {
            body["use_streaming_response"] = streaming.clone();
        }
        let (s, v) = sb(&app, "POST", "/v3/bots/ai/ai_chatbot_replies", Some(body)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({"reply_messages": ["Sendbird is a chat platform."]}),
            "streaming {streaming}"
        );
    }
    let req = fake.requests().last().unwrap().clone();
    assert!(req.text().contains("You know Sendbird."));
    let turns: Vec<(String, String)> = req.messages().into_iter().filter(|(r, _)| r != "system").collect();
    assert_eq!(
        turns,
        [
            ("user", "Hi"),
            ("assistant", "Hi, how can I help you?"),
            ("user", "Tell me about Sendbird.")
        ]
        .map(|(r, c)| (r.to_string(), c.to_string()))
    );

    // SSE only when asked for.
    let r = app
        .http
        .post(app.url("/v3/bots/ai/ai_chatbot_replies"))
        .header("Api-Token", MASTER)
        .header("Accept", "text/event-stream")
        .json(&json!({"messages": conversation}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: String = events.iter().filter_map(|e| e["message_delta"].as_str()).collect();
    assert_eq!(deltas, "Sendbird is a chat platform.");
    assert!(
        events.iter().filter(|e| e.get("message_delta").is_some()).count() > 1,
        "{text}"
    );
    assert_eq!(
        events.last().unwrap(),
        &json!({"reply_messages": ["Sendbird is a chat platform."]})
    );

    for (body, code) in [
        (json!({}), 400105),
        (json!({"messages": []}), 400111),
        (json!({"messages": "hi"}), 400111),
        (json!({"messages": [{"role": "system", "content": "x"}]}), 400111),
        (json!({"messages": [{"role": "user", "content": 1}]}), 400111),
        (json!({"messages": [{"role": "assistant", "content": "last"}]}), 400111),
    ] {
        let (s, v) = sb(&app, "POST", "/v3/bots/ai/ai_chatbot_replies", Some(body.clone())).await;
        assert_eq!(error_of(s, &v), (400, code), "{body}");
    }
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/ghost/ai_chatbot_replies",
        Some(json!({"messages": conversation})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400201));
    sb(
        &app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": "hook", "bot_callback_url": "http://127.0.0.1:9/"})),
    )
    .await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/hook/ai_chatbot_replies",
        Some(json!({"messages": conversation})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111), "a callback bot has no LLM");

    // The provider fails: Sendbird's internal error, not a hang or a partial answer.
    fake.set_default(Behaviour::server_error());
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/ai/ai_chatbot_replies",
        Some(json!({"messages": conversation})),
    )
    .await;
    assert_eq!(error_of(s, &v), (500, 500901));

    // The provider is saturated: Sendbird's rate-limit code, with a status that tells clients to back off.
    fake.set_default(Behaviour::rate_limited(1));
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/bots/ai/ai_chatbot_replies",
        Some(json!({"messages": conversation})),
    )
    .await;
    assert_eq!(error_of(s, &v), (429, 500910), "{v}");
}
