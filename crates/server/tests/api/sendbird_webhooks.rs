//! Sendbird webhooks: settings under `/v3/applications/settings/webhook`, events POSTed to a receiver on
//! loopback, `x-sendbird-signature` verified the way Sendbird's documentation tells applications to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::*;
use crate::sendbird::{error_of, sb};

pub(crate) struct Received {
    pub signature: String,
    pub user_agent: String,
    pub raw: Bytes,
    pub body: Value,
}

/// A webhook receiver on loopback: answers 500 to the first `fail_first` requests, then 200.
pub(crate) async fn receiver(fail_first: u32) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
            let (tx, hits) = (tx.clone(), hits.clone());
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let body = serde_json::from_slice(&raw).expect("webhook bodies are JSON");
                let _ = tx.send(Received {
                    signature: header("x-sendbird-signature"),
                    user_agent: header("user-agent"),
                    raw,
                    body,
                });
                if hits.fetch_add(1, Ordering::SeqCst) < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// Sendbird's documented check: hex HMAC-SHA256 of the raw body keyed with the master API token.
pub(crate) fn verify(r: &Received) {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(MASTER.as_bytes()).unwrap();
    mac.update(&r.raw);
    let expected = mac.finalize().into_bytes();
    let got = hex::decode(&r.signature).expect("hex signature");
    assert_eq!(got.as_slice(), expected.as_slice(), "signature of {}", r.body);
}

pub(crate) async fn next_event(rx: &mut mpsc::UnboundedReceiver<Received>, category: &str) -> Received {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {category} webhook"))
            .expect("receiver alive");
        if r.body["category"] == category {
            return r;
        }
    }
}

pub(crate) fn loopback_allowed(c: &mut confab::Config) {
    c.webhooks.allow_private = vec!["127.0.0.1".into()];
    c.webhooks.backoff_ms = 50;
}

#[tokio::test]
async fn sendbird_webhook_settings_and_signed_events() {
    let app = spawn_app_with(loopback_allowed).await;
    let (url, mut rx) = receiver(0).await;

    let (s, v) = sb(&app, "GET", "/v3/applications/settings/webhook", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["webhook"],
        json!({"enabled": false, "url": "", "include_members": false, "enabled_events": []})
    );

    let settings = json!({"enabled": true, "url": url, "include_members": true,
        "enabled_events": ["group_channel:create", "group_channel:message_send", "group_channel:message_update",
            "group_channel:message_delete"]});
    let (s, v) = sb(&app, "PUT", "/v3/applications/settings/webhook", Some(settings.clone())).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["webhook"], settings);
    let (_, v) = sb(
        &app,
        "GET",
        "/v3/applications/settings/webhook?display_all_webhook_categories=True",
        None,
    )
    .await;
    assert_eq!(v["webhook"]["enabled"], true);
    assert!(
        v["webhook"]["all_webhook_categories"].as_array().unwrap().len() >= 7,
        "{v}"
    );

    for u in ["wa", "wb"] {
        let (s, v) = sb(
            &app,
            "POST",
            "/v3/users",
            Some(json!({"user_id": u, "nickname": u.to_uppercase(), "profile_url": ""})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    app.group("hooked", &["wa", "wb"]).await;
    let created = next_event(&mut rx, "group_channel:create").await;
    verify(&created);
    assert_eq!(created.user_agent, "SendBird");
    assert_eq!(created.body["channel"]["channel_url"], "hooked");
    assert_eq!(created.body["app_id"], "confab");

    let token = app.admin("POST", "/api/v1/users/wa/sessions", None).await.1["token"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = app.send_as(&token, "hooked", "hello hooks").await;
    let r = next_event(&mut rx, "group_channel:message_send").await;
    verify(&r);
    assert_eq!(r.body["sender"]["user_id"], "wa");
    assert_eq!(r.body["sender"]["nickname"], "WA");
    assert_eq!(r.body["type"], "MESG");
    assert_eq!(r.body["payload"]["message"], "hello hooks");
    assert_eq!(r.body["payload"]["message_id"], sent["id"]);
    assert_eq!(r.body["channel"]["channel_url"], "hooked");
    let mut members: Vec<&str> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["wa", "wb"]);

    let id = sent["id"].as_i64().unwrap();
    let (s, v) = app
        .call(
            "PATCH",
            &format!("/api/v1/messages/{id}"),
            &token,
            Some(json!({"text": "hello, edited"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = next_event(&mut rx, "group_channel:message_update").await;
    verify(&r);
    assert_eq!(r.body["payload"]["message"], "hello, edited");

    // Not subscribed: no `group_channel:leave` when a member leaves; the next event is the delete.
    let (s, v) = app.admin("DELETE", "/api/v1/channels/hooked/members/wb", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    let (s, v) = app
        .call("DELETE", &format!("/api/v1/messages/{id}"), &token, None)
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.body["category"], "group_channel:message_delete", "{}", r.body);
    assert_eq!(r.body["payload"]["message_id"], id);
    verify(&r);
}

#[tokio::test]
async fn sendbird_webhooks_are_retried_with_the_same_signed_body() {
    let app = spawn_app_with(loopback_allowed).await;
    let (url, mut rx) = receiver(2).await;
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": true, "url": url, "enabled_events": ["*"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    app.user("ra").await;
    app.group("retried", &["ra"]).await;
    let attempts: Vec<Received> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(next_event(&mut rx, "group_channel:create").await);
        }
        v
    };
    for a in &attempts {
        verify(a);
        assert_eq!(a.raw, attempts[0].raw, "every attempt carries the same body");
    }
}

#[tokio::test]
async fn sendbird_webhook_settings_errors_and_private_destinations() {
    let app = spawn_app().await; // default egress policy: public addresses only
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400105));
    for bad in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/h",
        "ftp://example.com/",
    ] {
        let (s, v) = sb(
            &app,
            "PUT",
            "/v3/applications/settings/webhook",
            Some(json!({"enabled": true, "url": bad})),
        )
        .await;
        assert_eq!(error_of(s, &v), (400, 400111), "{bad}");
    }
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": false, "enabled_events": ["not a category"]})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111));
    let r = app
        .http
        .get(app.url("/v3/applications/settings/webhook"))
        .header("Api-Token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 400401);

    // A name that resolves to loopback is accepted as a URL but never connected to.
    let (url, mut rx) = receiver(0).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/applications/settings/webhook",
        Some(json!({"enabled": true, "url": by_name, "enabled_events": ["*"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    app.user("pa").await;
    app.group("private", &["pa"]).await;
    // The receiver queues a request before answering it, and the relay records an attempt after its request
    // ended: an attempt that never connected, and nothing queued, means the name led nowhere.
    let attempt = newest_attempt(&app, "sendbird").await;
    assert_eq!(attempt["delivered"], false, "{attempt}");
    assert!(attempt.get("status").is_none(), "never connected: {attempt}");
    assert!(
        rx.try_recv().is_err(),
        "a webhook reached a loopback receiver through a name"
    );
}
