//! The Sendbird and NIM webhook formats, and Sendbird's bot callbacks, come from the durable outbox like
//! native webhooks: kept as managed endpoints by their surfaces, delivered after a `kill -9`, shown (not
//! changed) by the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::{Hmac, KeyInit, Mac};
use md5::Digest;
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::sync::mpsc;

use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET};
use crate::sendbird::sb;

struct Hit {
    path: String,
    headers: HeaderMap,
    raw: Bytes,
    body: Value,
}

impl Hit {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// One receiver for every format (`/sb`, `/nim`, `/cb` for bot callbacks), answering 503 while `down` is set.
async fn receiver(down: Arc<AtomicBool>) -> (String, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, raw: Bytes| {
        let (tx, down) = (tx.clone(), down.clone());
        async move {
            let body = serde_json::from_slice(&raw).expect("webhook bodies are JSON");
            let _ = tx.send(Hit {
                path: uri.path().to_string(),
                headers,
                raw,
                body,
            });
            if down.load(Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rx)
}

/// Sendbird's documented check: hex HMAC-SHA256 of the raw body keyed with the master API token.
fn verify_sendbird(h: &Hit) {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(MASTER.as_bytes()).unwrap();
    mac.update(&h.raw);
    assert_eq!(
        h.header("x-sendbird-signature"),
        hex::encode(mac.finalize().into_bytes())
    );
}

/// NIM's documented check: MD5 of the body, and CheckSum = sha1(AppSecret + MD5 + CurTime).
fn verify_nim(h: &Hit) {
    let md5 = hex::encode(md5::Md5::digest(&h.raw));
    assert_eq!(h.header("md5"), md5);
    assert_eq!(h.header("appkey"), APP_KEY);
    let mut sha = Sha1::new();
    sha.update(format!("{APP_SECRET}{md5}{}", h.header("curtime")));
    assert_eq!(h.header("checksum"), hex::encode(sha.finalize()));
}

/// Messages acknowledged while the application's receiver is down reach it in both formats (in the
/// channel's order), and as the callbacks of the bot they trigger, after the server is killed with SIGKILL
/// and started again: each once per format. The stored bot keeps getting callbacks after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendbird_and_nim_webhooks_and_bot_callbacks_survive_kill_9() {
    use crate::durability::{call, seed_group, send_texts, start_with, wait_ready};

    let down = Arc::new(AtomicBool::new(true));
    let (base, mut rx) = receiver(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("confab.toml");
    std::fs::write(
        &config,
        format!(
            "[webhooks]\nallow_private = [\"127.0.0.1\"]\nbackoff_ms = 100\nmax_backoff_secs = 1\n\
             [nim]\napp_key = \"{APP_KEY}\"\napp_secret = \"{APP_SECRET}\"\nwebhook_url = \"{base}/nim\"\n"
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let http = reqwest::Client::new();
    let mut server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    let r = http
        .put(format!("http://{}/v3/applications/settings/webhook", server.addr))
        .header("Api-Token", MASTER)
        .json(&json!({"enabled": true, "url": format!("{base}/sb"),
            "enabled_events": ["group_channel:message_send"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    seed_group(&http, server.addr).await;
    // A callback bot of `g`, triggered by every message (no privacy mode).
    for (path, body) in [
        (
            "/v3/bots",
            json!({"bot_userid": "cbbot", "bot_callback_url": format!("{base}/cb"), "is_privacy_mode": false}),
        ),
        ("/v3/bots/cbbot/channels", json!({"channel_urls": ["g"]})),
    ] {
        let r = http
            .post(format!("http://{}{path}", server.addr))
            .header("Api-Token", MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    const SENT: usize = 20;
    send_texts(&http, server.addr, SENT).await;
    // Every format has been tried (and refused): delivery is under way when the server dies.
    let mut tried = (false, false, false);
    while tried != (true, true, true) {
        let h = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("both formats tried")
            .unwrap();
        match h.path.as_str() {
            "/sb" => tried.0 = true,
            "/nim" => tried.1 = true,
            "/cb" => tried.2 = true,
            other => panic!("unexpected path {other}"),
        }
    }
    // A callback is durable once the bot runtime has decided it (after the message's commit): wait until the
    // callbacks' endpoint has read all of them from the outbox.
    let mut pending = 0;
    for _ in 0..200 {
        let (s, v) = call(
            &http,
            server.addr,
            "GET",
            "/api/v1/webhooks/endpoints/sendbird_callbacks",
            Value::Null,
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{v}");
        pending = v["pending"].as_u64().unwrap();
        if pending == SENT as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending, SENT as u64, "callbacks recorded");
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    while rx.try_recv().is_ok() {}

    down.store(false, Ordering::SeqCst);
    let mut server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    let (mut sendbird, mut nim, mut callbacks) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sendbird.len() < SENT || nim.len() < SENT || callbacks.len() < SENT {
        let h = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} Sendbird, {} NIM and {} callback deliveries after the restart",
                    sendbird.len(),
                    nim.len(),
                    callbacks.len()
                )
            })
            .unwrap();
        // The Standard Webhooks headers come with every format.
        assert!(h.header("webhook-id").starts_with("evt_"), "{:?}", h.headers);
        if h.path == "/sb" {
            verify_sendbird(&h);
            assert_eq!(h.body["category"], "group_channel:message_send", "{}", h.body);
            assert_eq!(h.body["channel"]["channel_url"], "g");
            sendbird.push(h.body["payload"]["message"].as_str().unwrap().to_string());
        } else if h.path == "/cb" {
            verify_sendbird(&h);
            assert_eq!(h.body["category"], "bot_message_notification", "{}", h.body);
            assert_eq!(h.body["bot"]["bot_userid"], "cbbot");
            assert_eq!(h.body["channel"]["channel_url"], "g");
            callbacks.push(h.body["message"]["text"].as_str().unwrap().to_string());
        } else {
            verify_nim(&h);
            assert_eq!(h.body["convType"], "TEAM", "{}", h.body);
            nim.push(h.body["body"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(sendbird, expected, "once each, in the channel's order");
    assert_eq!(nim, expected, "once each, in the channel's order");
    // Callbacks go in the order the bot runtime recorded them, which decides each message's triggers in a task
    // of its own: once each is what a restart must keep.
    callbacks.sort_by_key(|t| t[1..].parse::<usize>().unwrap());
    assert_eq!(callbacks, expected, "once each");
    // The bot, stored before the restart, is told of what comes after it too.
    let (s, v) = call(
        &http,
        server.addr,
        "POST",
        "/api/v1/channels/g/messages",
        json!({"sender_id": "bob", "text": "after the restart"}),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    loop {
        let h = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the callback of a message sent after the restart")
            .unwrap();
        if h.path == "/cb" {
            verify_sendbird(&h);
            assert_eq!(h.body["message"]["text"], "after the restart", "{}", h.body);
            break;
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// The Sendbird settings keep an endpoint the admin API shows with its format and counters but does not
/// change; the settings change or remove it.
#[tokio::test]
async fn managed_endpoints_follow_their_surface_settings() {
    let app = spawn_app_with(|c| {
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
        c.webhooks.backoff_ms = 50;
    })
    .await;
    let (base, mut rx) = receiver(Arc::new(AtomicBool::new(false))).await;
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": true, "url": format!("{base}/sb"), "enabled_events": ["group_channel:create"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app.admin("GET", "/api/v1/webhooks/endpoints/sendbird", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["format"], "sendbird");
    assert_eq!(v["events"], json!(["channel.created"]));
    assert_eq!(v["enabled"], true);

    app.user("ma").await;
    app.group("managed", &["ma"]).await;
    let h = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    verify_sendbird(&h);
    assert_eq!(h.body["category"], "group_channel:create");
    assert_eq!(h.body["channel"]["channel_url"], "managed");
    // Counted like any endpoint's deliveries.
    let mut delivered = 0;
    for _ in 0..50 {
        delivered = app.admin("GET", "/api/v1/webhooks/endpoints/sendbird", None).await.1["delivered"]
            .as_u64()
            .unwrap();
        if delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 1);

    // Only the surface's settings change it.
    let (s, v) = app
        .admin(
            "PATCH",
            "/api/v1/webhooks/endpoints/sendbird",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = app.admin("DELETE", "/api/v1/webhooks/endpoints/sendbird", None).await;
    assert_eq!(s, 403, "{v}");

    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app.admin("GET", "/api/v1/webhooks/endpoints/sendbird", None).await;
    assert_eq!(v["enabled"], false, "{v}");
    app.group("unheard", &["ma"]).await;

    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": false, "url": ""})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = app.admin("GET", "/api/v1/webhooks/endpoints/sendbird", None).await;
    assert_eq!(s, 404);
    assert!(rx.try_recv().is_err(), "nothing delivered while disabled");
}

/// Sendbird webhook settings stored while loopback was allowed do not stop a server whose configuration
/// no longer allows it: it starts, and the settings stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_settings_the_configuration_now_refuses_do_not_stop_the_server() {
    use crate::durability::{start_with, wait_ready};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("confab.toml");
    std::fs::write(&config, "[egress]\nallow_private = [\"127.0.0.1\"]\n").unwrap();
    let http = reqwest::Client::new();
    let mut server = start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    wait_ready(&http, server.addr).await;
    let settings = |addr| format!("http://{addr}/v3/applications/settings/webhook");
    let r = http
        .put(settings(server.addr))
        .header("Api-Token", MASTER)
        .json(&json!({"enabled": true, "url": "http://127.0.0.1:9/hook", "enabled_events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = start_with(dir.path(), &[]);
    wait_ready(&http, server.addr).await;
    let v: Value = http
        .get(settings(server.addr))
        .header("Api-Token", MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["webhook"]["url"], "http://127.0.0.1:9/hook", "{v}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A bot's reply reaches both formats once, final and whole: Sendbird as one `message_send` carrying the
/// reply's state, NIM as one copy from the bot; never the empty placeholder it starts as.
#[tokio::test]
async fn a_bot_reply_is_announced_once_when_final_in_both_formats() {
    use confab_llm::fake::{Behaviour, FakeProvider};
    use confab_llm::{ProviderConfig, ProviderKind};

    const REPLY: &str = "A complete answer from the bot.";
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success(REPLY));
    let (base, mut rx) = receiver(Arc::new(AtomicBool::new(false))).await;
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("fake-model".into());
    let nim_url = format!("{base}/nim");
    let app = spawn_app_with(move |c| {
        c.providers = vec![p];
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
        c.nim.webhook_url = nim_url;
    })
    .await;
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": true, "url": format!("{base}/sb"), "enabled_events": ["group_channel:message_send"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "answerer", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let alice = app.user("alice").await;
    app.group("asking", &["alice", "answerer"]).await;
    app.send_as(&alice, "asking", "@answerer a question").await;

    let (mut sendbird, mut nim) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while sendbird.len() < 2 || nim.len() < 2 {
        let h = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} Sendbird and {} NIM deliveries", sendbird.len(), nim.len()))
            .unwrap();
        if h.path == "/sb" {
            verify_sendbird(&h);
            sendbird.push(h.body);
        } else {
            verify_nim(&h);
            nim.push(h.body);
        }
    }
    assert_eq!(sendbird[0]["payload"]["message"], "@answerer a question");
    assert_eq!(sendbird[1]["sender"]["user_id"], "answerer", "{}", sendbird[1]);
    assert_eq!(sendbird[1]["payload"]["message"], REPLY);
    let data: Value = serde_json::from_str(sendbird[1]["payload"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (data["stream"].as_bool(), data["reply_state"].as_str()),
        (Some(false), Some("complete"))
    );
    assert_eq!(nim[1]["fromAccount"], "answerer", "{}", nim[1]);
    assert_eq!(nim[1]["body"], REPLY);
    // Nothing more: no placeholder, no second announcement. Each endpoint delivers a channel's outbox rows
    // one at a time in commit order, and the reply's rows were committed by its end: a later message of the
    // channel is the next delivery of each format.
    app.send_as(&alice, "asking", "thanks").await;
    let mut formats = std::collections::HashSet::new();
    while formats.len() < 2 {
        let h = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("the later message in both formats")
            .unwrap();
        let text = if h.path == "/sb" {
            &h.body["payload"]["message"]
        } else {
            &h.body["body"]
        };
        assert_eq!(text, "thanks", "one announcement per message: {} {}", h.path, h.body);
        formats.insert(h.path);
    }
}
