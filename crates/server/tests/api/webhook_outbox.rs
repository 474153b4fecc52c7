//! Outgoing webhooks from the durable outbox: endpoints with event filters, Standard Webhooks signatures
//! checked by a receiver written from the specification, order per channel, retries with a stable
//! `webhook-id`, dead letters and redelivery, refused private destinations, and delivery surviving `kill -9`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::*;

/// One request the receiver got, already verified.
pub(crate) struct Hook {
    pub id: String,
    pub body: Value,
}

/// How the receiver answers.
#[derive(Clone, Default)]
pub(crate) struct Script {
    /// Answer 500 to the first requests for each webhook-id, this many times.
    fail_each_first: u32,
    /// Answer 503 to everything while set.
    down: Arc<AtomicBool>,
}

/// The secrets a receiver was given, one per endpoint that delivers to it.
pub(crate) type Secrets = std::sync::Mutex<Vec<String>>;

/// A receiver on loopback that verifies every request as the Standard Webhooks specification says
/// (HMAC-SHA256 keyed with the base64-decoded part of one of the endpoints' `whsec_` secrets, over
/// `id.timestamp.body`; timestamp within five minutes) and hands over those it accepted or refused on purpose.
pub(crate) async fn receiver(script: Script) -> (String, Arc<Secrets>, mpsc::UnboundedReceiver<Hook>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let secret = Arc::new(Secrets::default());
    let seen: Arc<std::sync::Mutex<HashMap<String, u32>>> = Arc::default();
    let key = secret.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
            let (tx, key, seen, script) = (tx.clone(), key.clone(), seen.clone(), script.clone());
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let (id, ts, sig) = (
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                );
                let secrets = key.lock().unwrap().clone();
                if !secrets.iter().any(|secret| verify(secret, &id, &ts, &sig, &raw)) {
                    // A forged or stale request: refused, and the test notices nothing arrives.
                    return StatusCode::UNAUTHORIZED;
                }
                let body: Value = serde_json::from_slice(&raw).expect("JSON body");
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(id.clone()).or_default();
                    *n += 1;
                    *n
                };
                let _ = tx.send(Hook { id, body });
                if script.down.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else if n <= script.fail_each_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), secret, rx)
}

/// The Standard Webhooks verification, from the specification.
pub(crate) fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts).abs() > 300 || id.is_empty() {
        return false;
    }
    let Some(key) = secret.strip_prefix("whsec_").and_then(|k| STANDARD.decode(k).ok()) else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

pub(crate) async fn next_hook(rx: &mut mpsc::UnboundedReceiver<Hook>) -> Hook {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a webhook within 15 s")
        .expect("receiver alive")
}

pub(crate) fn loopback(c: &mut confab::Config) {
    c.webhooks.allow_private = vec!["127.0.0.1".into()];
    c.webhooks.backoff_ms = 50;
    // The tests send faster than a person would.
    c.limits.user_send_per_sec = 1000;
    c.limits.user_send_burst = 1000;
}

pub(crate) async fn add_endpoint(app: &TestApp, url: &str, events: Value, secret: &Secrets) -> String {
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/webhooks/endpoints",
            Some(json!({"url": url, "events": events, "description": "test"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let key = v["secret"].as_str().unwrap();
    assert!(key.starts_with("whsec_"), "{v}");
    secret.lock().unwrap().push(key.to_string());
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn endpoints_receive_signed_filtered_events_in_channel_order() {
    let app = spawn_app_with(loopback).await;
    let (url, secret, mut rx) = receiver(Script::default()).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let id = add_endpoint(
        &app,
        &url,
        json!(["message.*", "channel.created", "member.joined"]),
        &secret,
    )
    .await;

    // The secret is never shown again.
    let (s, v) = app
        .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("secret").is_none(), "{v}");
    assert_eq!(v["events"], json!(["message.*", "channel.created", "member.joined"]));

    app.group("one", &["alice", "bob"]).await;
    app.group("two", &["alice", "bob"]).await;
    app.user("carol").await; // user.created: not subscribed
    let mut sent = Vec::new();
    for i in 0..10 {
        for ch in ["one", "two"] {
            sent.push(app.send_as(&alice, ch, &format!("{ch} {i}")).await);
        }
    }
    let first = sent[0]["id"].as_i64().unwrap();
    let (s, _) = app
        .call(
            "PATCH",
            &format!("/api/v1/messages/{first}"),
            &alice,
            Some(json!({"text": "edited"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/messages/{first}"), &alice, None)
        .await;
    assert_eq!(s, 204);

    let mut by_channel: HashMap<String, Vec<u64>> = HashMap::new();
    let mut types = Vec::new();
    let mut ids = HashSet::new();
    while types.len() < 2 + 20 + 2 {
        let h = next_hook(&mut rx).await;
        assert!(
            ids.insert(h.id.clone()),
            "one delivery per event when the receiver accepts: {}",
            h.id
        );
        let ty = h.body["type"].as_str().unwrap().to_string();
        assert!(h.body["timestamp"].is_i64(), "{}", h.body);
        if ty == "message.sent" {
            let m = &h.body["data"]["message"];
            by_channel
                .entry(m["channel_id"].as_str().unwrap().to_string())
                .or_default()
                .push(m["seq"].as_u64().unwrap());
        }
        if ty == "message.edited" {
            assert_eq!(h.body["data"]["message"]["text"], "edited");
        }
        if ty == "message.deleted" {
            assert_eq!(h.body["data"]["message_id"], first);
        }
        types.push(ty);
    }
    assert_eq!(types.iter().filter(|t| *t == "channel.created").count(), 2, "{types:?}");
    assert!(!types.iter().any(|t| t.starts_with("user.")), "{types:?}");
    for (ch, seqs) in &by_channel {
        assert_eq!(seqs, &(1..=10).collect::<Vec<u64>>(), "channel {ch} in order");
    }
    // Edit and delete of one message reach the endpoint after its send, in that order.
    let pos = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(pos("message.edited") < pos("message.deleted"), "{types:?}");

    let (_, v) = app
        .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}/attempts"), None)
        .await;
    assert!(v["attempts"].as_array().unwrap().len() >= 24, "{v}");
    assert_eq!(v["attempts"][0]["delivered"], true);

    // Filter changes apply to what comes next; a deleted endpoint gets nothing more.
    let (s, v) = app
        .admin(
            "PATCH",
            &format!("/api/v1/webhooks/endpoints/{id}"),
            Some(json!({"events": ["user.created"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    app.send_as(&alice, "one", "not announced").await;
    app.user("dave").await;
    let h = next_hook(&mut rx).await;
    assert_eq!(h.body["type"], "user.created");
    assert_eq!(h.body["data"]["user"]["id"], "dave");

    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/webhooks/endpoints",
            Some(json!({"url": url, "events": ["message.sant"]})),
        )
        .await;
    assert_eq!(s, 400, "unknown event type: {v}");
    let (s, _) = app
        .admin("DELETE", &format!("/api/v1/webhooks/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 204);
    app.user("erin").await;
    // DELETE answers once the endpoint's worker has stopped, and every worker reads the outbox in id order:
    // a new endpoint on the same receiver delivers a later event, and nothing of erin came before it.
    add_endpoint(&app, &url, json!(["user.created"]), &secret).await;
    app.user("frank").await;
    let h = next_hook(&mut rx).await;
    assert_eq!(
        h.body["data"]["user"]["id"], "frank",
        "nothing after the endpoint is gone: {}",
        h.body
    );
    // Users never see the endpoints.
    let (s, _) = app.call("GET", "/api/v1/webhooks/endpoints", &alice, None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn retries_keep_the_webhook_id_then_dead_letters_can_be_redelivered() {
    let app = spawn_app_with(|c| {
        loopback(c);
        c.webhooks.retry_period_secs = 2;
    })
    .await;
    let (url, secret, mut rx) = receiver(Script {
        fail_each_first: 2,
        ..Default::default()
    })
    .await;
    add_endpoint(&app, &url, json!(["user.created"]), &secret).await;
    app.user("retried").await;
    let attempts: Vec<Hook> = vec![
        next_hook(&mut rx).await,
        next_hook(&mut rx).await,
        next_hook(&mut rx).await,
    ];
    assert!(
        attempts.iter().all(|h| h.id == attempts[0].id),
        "same webhook-id on every attempt"
    );
    assert!(
        attempts.iter().all(|h| h.body == attempts[0].body),
        "same body on every attempt"
    );
    assert_eq!(attempts[0].body["data"]["user"]["id"], "retried");

    // An endpoint that stays down: after the retry period the event is dead-lettered.
    let down = Script::default();
    down.down.store(true, Ordering::SeqCst);
    let (url, secret, mut rx) = receiver(down.clone()).await;
    let id = add_endpoint(&app, &url, json!(["user.created"]), &secret).await;
    app.user("lost").await;
    let first = next_hook(&mut rx).await;
    let letters = loop {
        let (s, v) = app
            .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}/dead_letters"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        if !v["dead_letters"].as_array().unwrap().is_empty() {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["event_type"], "user.created");
    assert_eq!(letter["payload"]["data"]["user"]["id"], "lost");
    assert!(letter["attempts"].as_u64().unwrap() >= 2, "{letter}");
    assert_eq!(letter["last_error"], "HTTP 503");
    let (_, v) = app
        .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}"), None)
        .await;
    assert_eq!(v["dead_lettered"], 1, "{v}");
    assert_eq!(v["pending"], 0, "{v}");

    // Still down: redelivery fails and the letter stays; back up: it is delivered with the same id.
    let event = letter["event_id"].as_u64().unwrap();
    let redeliver = format!("/api/v1/webhooks/endpoints/{id}/dead_letters/{event}/redeliver");
    let (s, v) = app.admin("POST", &redeliver, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["delivered"], false, "{v}");
    down.down.store(false, Ordering::SeqCst);
    let (s, v) = app.admin("POST", &redeliver, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["delivered"], true, "{v}");
    // The receiver queues each request before answering it, and redelivery answers after the receiver did:
    // every attempt so far is queued, the redelivery last.
    let mut last = next_hook(&mut rx).await;
    while let Ok(h) = rx.try_recv() {
        assert_eq!(h.id, first.id, "only the dead letter's event was sent");
        last = h;
    }
    assert_eq!(last.id, first.id);
    let (_, v) = app
        .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}/dead_letters"), None)
        .await;
    assert_eq!(v["dead_letters"], json!([]), "{v}");
    let (s, _) = app.admin("POST", &redeliver, None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let app = spawn_app().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
    ] {
        let (s, v) = app
            .admin("POST", "/api/v1/webhooks/endpoints", Some(json!({"url": url})))
            .await;
        assert_eq!(s, 400, "{url}: {v}");
        assert!(v.to_string().contains("url"), "{v}");
    }
    // A name is resolved at delivery, and one that resolves to loopback is refused there.
    let (url, secret, mut rx) = receiver(Script::default()).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/webhooks/endpoints",
            Some(json!({"url": by_name, "events": ["user.created"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    secret.lock().unwrap().push(v["secret"].as_str().unwrap().to_string());
    let id = v["id"].as_str().unwrap().to_string();
    app.user("probe").await;
    let attempt = newest_attempt(&app, &id).await;
    assert_eq!(attempt["delivered"], false, "{attempt}");
    assert!(attempt.get("status").is_none(), "never connected: {attempt}");
    assert!(rx.try_recv().is_err(), "the receiver was never reached");
}

/// Events committed while the endpoint refuses them are still delivered after the server is killed with
/// SIGKILL and started again: they were recorded in the same transaction as the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_delivery_survives_kill_9() {
    use crate::durability::{add_endpoint_at, seed_group, send_texts, start_with, wait_ready};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("confab.toml");
    std::fs::write(
        &config,
        "[webhooks]\nallow_private = [\"127.0.0.1\"]\nbackoff_ms = 100\nmax_backoff_secs = 1\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let http = reqwest::Client::new();
    let down = Script::default();
    down.down.store(true, Ordering::SeqCst);
    let (url, secret, mut rx) = receiver(down.clone()).await;

    let mut server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    let (_, key) = add_endpoint_at(&http, server.addr, &url).await;
    secret.lock().unwrap().push(key);
    seed_group(&http, server.addr).await;
    let acked: HashSet<u64> = send_texts(&http, server.addr, 40).await.into_iter().collect();
    // The endpoint has seen (and refused) at least the first event: delivery is under way.
    next_hook(&mut rx).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    while rx.try_recv().is_ok() {}

    down.down.store(false, Ordering::SeqCst);
    let mut server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    let mut delivered: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered.len() < acked.len() {
        let h = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every acknowledged message announced after the restart")
            .unwrap();
        delivered.push(h.body["data"]["message"]["seq"].as_u64().unwrap());
    }
    // Every acknowledged message, once, in the channel's order.
    let mut expected: Vec<u64> = acked.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(delivered, expected);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// An endpoint that holds every request open does not hold up sending: every send is acknowledged while
/// none of the endpoint's answers has come, and the events follow once it answers.
#[tokio::test]
async fn a_stalled_endpoint_never_holds_up_sending() {
    let app = spawn_app_with(loopback).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let gate = release.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |raw: Bytes| {
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                // Held until the test releases it.
                gate.acquire().await.unwrap().forget();
                let body: Value = serde_json::from_slice(&raw).unwrap();
                let _ = tx.send(body["data"]["message"]["seq"].as_u64().unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let secret = Secrets::default();
    let id = add_endpoint(&app, &format!("http://{addr}/hook"), json!(["message.sent"]), &secret).await;

    let alice = app.user("alice").await;
    app.group("busy", &["alice"]).await;
    for i in 0..30 {
        app.send_as(&alice, "busy", &format!("m{i}")).await;
    }
    assert!(rx.try_recv().is_err(), "the endpoint has answered nothing yet");
    // Every event waits for the endpoint (none can have been delivered, so the count only grows to 30).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = app
            .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}"), None)
            .await;
        if v["pending"] == 30 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.add_permits(1000);
    let mut seqs = Vec::new();
    while seqs.len() < 30 {
        seqs.push(
            tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("delivered once released")
                .unwrap(),
        );
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_disabled_endpoint_receives_nothing_of_what_happens_meanwhile() {
    let app = spawn_app_with(loopback).await;
    let (url, secret, mut rx) = receiver(Script::default()).await;
    let id = add_endpoint(&app, &url, json!(["user.created"]), &secret).await;
    let path = format!("/api/v1/webhooks/endpoints/{id}");
    let (s, v) = app.admin("PATCH", &path, Some(json!({"enabled": false}))).await;
    assert_eq!((s, v["enabled"].as_bool()), (200, Some(false)), "{v}");
    app.user("quiet").await;
    let (s, _) = app.admin("PATCH", &path, Some(json!({"enabled": true}))).await;
    assert_eq!(s, 200);
    app.user("loud").await;
    let h = next_hook(&mut rx).await;
    assert_eq!(h.body["data"]["user"]["id"], "loud");
    assert!(rx.try_recv().is_err());
}
