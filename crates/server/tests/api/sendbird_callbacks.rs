//! Sendbird bot callbacks delivered from the durable outbox: retries per bot, dead letters and redelivery.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sendbird::sb;
use crate::sendbird_bots::{sb_channel, sb_send, sb_user};
use crate::sendbird_webhooks::{loopback_allowed, next_event, receiver, verify};

/// A callback bot (no privacy mode: every message triggers it) of channel `channel`, told at `url`.
async fn callback_bot(app: &TestApp, id: &str, url: &str, channel: &str) {
    let (s, v) = sb(
        app,
        "POST",
        "/v3/bots",
        Some(json!({"bot_userid": id, "bot_callback_url": url, "is_privacy_mode": false})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sb(
        app,
        "POST",
        &format!("/v3/bots/{id}/channels"),
        Some(json!({"channel_urls": [channel]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// The next body a receiver got, whatever it is.
async fn next_body(rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::sendbird_webhooks::Received>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a delivery")
        .expect("receiver alive")
        .body
}

/// The callbacks' endpoint as the admin API shows it, once `done(endpoint)` holds (bounded wait).
async fn callbacks_endpoint(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let mut v = Value::Null;
    for _ in 0..200 {
        let (s, got) = app
            .admin("GET", "/api/v1/webhooks/endpoints/sendbird_callbacks", None)
            .await;
        assert_eq!(s, 200, "{got}");
        v = got;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the callbacks' endpoint never got there: {v}");
}

/// Bot callbacks come from the durable outbox, as webhooks do: a callback the bot's URL refuses is retried
/// with the same signed body until it is accepted; a bot whose URL keeps failing holds back no other bot's
/// callbacks of the channel, and its retries go to its callback URL as it is when they are made; the admin
/// API shows every callback's attempts under the endpoint `sendbird_callbacks`; a native endpoint gets
/// `bot.triggered` only when it asks for it.
#[tokio::test]
async fn sendbird_callbacks_are_retried_from_the_outbox_per_bot() {
    let app = spawn_app_with(|c| {
        loopback_allowed(c);
        c.webhooks.max_backoff_secs = 1;
    })
    .await;
    let (broken, mut broken_rx) = receiver(u32::MAX).await;
    let (flaky, mut flaky_rx) = receiver(2).await;
    let (fixed, mut fixed_rx) = receiver(0).await;
    let (native_all, mut all_rx) = receiver(0).await;
    let (native_bots, mut bots_rx) = receiver(0).await;
    for (url, events) in [(&native_all, json!([])), (&native_bots, json!(["bot.triggered"]))] {
        let (s, v) = app
            .admin(
                "POST",
                "/api/v1/webhooks/endpoints",
                Some(json!({"url": url, "events": events})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for u in ["ru1", "ru2"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "retryroom", &["ru1", "ru2"]).await;
    callback_bot(&app, "brokenbot", &broken, "retryroom").await;
    let first = sb_send(
        &app,
        "retryroom",
        json!({"message_type": "MESG", "user_id": "ru1", "message": "first"}),
    )
    .await;
    let refused = next_event(&mut broken_rx, "bot_message_notification").await;
    verify(&refused);
    assert_eq!(refused.body["message"]["message_id"], first["message_id"]);

    // A second bot joins and the next message triggers both. The first bot's callbacks wait behind its
    // refused one; the second bot's is refused twice, then accepted: the same signed bytes each time.
    callback_bot(&app, "flakybot", &flaky, "retryroom").await;
    let second = sb_send(
        &app,
        "retryroom",
        json!({"message_type": "MESG", "user_id": "ru2", "message": "second"}),
    )
    .await;
    let mut tries = Vec::new();
    for _ in 0..3 {
        tries.push(next_event(&mut flaky_rx, "bot_message_notification").await);
    }
    for t in &tries {
        verify(t);
        assert_eq!(t.user_agent, "SendBird");
        assert_eq!(t.raw, tries[0].raw, "a retry sends the same body");
    }
    assert_eq!(tries[0].body["bot"]["bot_userid"], "flakybot");
    assert_eq!(tries[0].body["message"]["message_id"], second["message_id"]);
    assert_eq!(tries[0].body["message"]["text"], "second");

    // The first bot's URL is fixed: its retries go there, its callbacks in the channel's order.
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/bots/brokenbot",
        Some(json!({"bot_callback_url": fixed})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for m in [&first, &second] {
        let cb = next_event(&mut fixed_rx, "bot_message_notification").await;
        verify(&cb);
        assert_eq!(cb.body["bot"]["bot_userid"], "brokenbot");
        assert_eq!(cb.body["message"]["message_id"], m["message_id"]);
    }

    // The admin API shows them as the deliveries of one managed endpoint.
    let ep = callbacks_endpoint(&app, |v| v["delivered"] == 3 && v["pending"] == 0).await;
    assert_eq!(ep["format"], "sendbird_callbacks", "{ep}");
    assert_eq!(ep["events"], json!(["bot.triggered"]), "{ep}");
    assert_eq!(ep["url"], "", "{ep}");
    assert!(ep["failed_attempts"].as_u64().unwrap() >= 3, "{ep}");
    let (s, v) = app
        .admin("GET", "/api/v1/webhooks/endpoints/sendbird_callbacks/attempts", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.iter().all(|a| a["event_type"] == "bot.triggered"), "{v}");
    for status in [200, 500] {
        assert!(attempts.iter().any(|a| a["status"] == status), "{v}");
    }
    let (s, v) = app
        .admin("DELETE", "/api/v1/webhooks/endpoints/sendbird_callbacks", None)
        .await;
    assert_eq!(s, 403, "kept by the Sendbird surface: {v}");

    // The native endpoint that asked got each trigger in the native envelope.
    let mut triggers = Vec::new();
    for _ in 0..3 {
        let b = next_body(&mut bots_rx).await;
        assert_eq!(b["type"], "bot.triggered", "{b}");
        triggers.push((
            b["data"]["bot_id"].as_str().unwrap().to_string(),
            b["data"]["message"]["text"].as_str().unwrap().to_string(),
        ));
    }
    triggers.sort();
    let want = [("brokenbot", "first"), ("brokenbot", "second"), ("flakybot", "second")];
    assert_eq!(triggers, want.map(|(b, t)| (b.to_string(), t.to_string())));
    // The one that takes every event did not: in the channel's order, the triggers of `first` and `second`
    // (recorded before this message) would come before it.
    sb_send(
        &app,
        "retryroom",
        json!({"message_type": "MESG", "user_id": "ru1", "message": "marker"}),
    )
    .await;
    loop {
        let b = next_body(&mut all_rx).await;
        assert_ne!(b["type"], "bot.triggered", "{b}");
        if b["type"] == "message.sent" && b["data"]["message"]["text"] == "marker" {
            break;
        }
    }
}

/// A callback its bot's URL refuses until the retry period ends is dead-lettered like any webhook: the admin
/// API lists it (as the native envelope of `bot.triggered`) and redelivers it, in Sendbird's format and
/// signature, to the bot's callback URL as it is then.
#[tokio::test]
async fn sendbird_callbacks_are_dead_lettered_and_redelivered() {
    let app = spawn_app_with(|c| {
        loopback_allowed(c);
        c.webhooks.retry_period_secs = 0;
    })
    .await;
    let (bad, mut bad_rx) = receiver(u32::MAX).await;
    let (good, mut good_rx) = receiver(0).await;
    for u in ["dl1", "dl2"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "dlroom", &["dl1", "dl2"]).await;
    callback_bot(&app, "dlbot", &bad, "dlroom").await;
    let sent = sb_send(
        &app,
        "dlroom",
        json!({"message_type": "MESG", "user_id": "dl1", "message": "lost?"}),
    )
    .await;
    let refused = next_event(&mut bad_rx, "bot_message_notification").await;
    verify(&refused);

    callbacks_endpoint(&app, |v| v["dead_lettered"] == 1 && v["pending"] == 0).await;
    let (s, v) = app
        .admin(
            "GET",
            "/api/v1/webhooks/endpoints/sendbird_callbacks/dead_letters",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let letter = &v["dead_letters"][0];
    assert_eq!(letter["event_type"], "bot.triggered", "{v}");
    assert_eq!(letter["payload"]["type"], "bot.triggered", "{v}");
    assert_eq!(letter["payload"]["data"]["bot_id"], "dlbot", "{v}");
    assert_eq!(letter["payload"]["data"]["message"]["id"], sent["message_id"], "{v}");
    assert_eq!(letter["last_error"], "HTTP 500", "{v}");

    let (s, v) = sb(&app, "PUT", "/v3/bots/dlbot", Some(json!({"bot_callback_url": good}))).await;
    assert_eq!(s, 200, "{v}");
    let event = letter["event_id"].as_u64().unwrap();
    let (s, v) = app
        .admin(
            "POST",
            &format!("/api/v1/webhooks/endpoints/sendbird_callbacks/dead_letters/{event}/redeliver"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["delivered"], true, "{v}");
    let cb = next_event(&mut good_rx, "bot_message_notification").await;
    verify(&cb);
    assert_eq!(cb.body, refused.body, "the same callback");
    let (_, v) = app
        .admin(
            "GET",
            "/api/v1/webhooks/endpoints/sendbird_callbacks/dead_letters",
            None,
        )
        .await;
    assert_eq!(v["dead_letters"], json!([]), "{v}");
}
