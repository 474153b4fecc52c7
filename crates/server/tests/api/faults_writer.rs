//! The store's writer stuck: another process holds the database's write lock (`BEGIN IMMEDIATE`) while
//! clients keep sending on every surface. Each send is acknowledged or refused with the surface's retryable
//! error, within a bounded time (one busy timeout per batch, not one per command); `/readyz` says so; reads
//! keep working; once the lock is released everything resumes, and every acknowledged message is in history,
//! gap-free, with nothing refused stored. (`abandoned.rs` covers `/healthz` and `/readyz` alone.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET, enc, nim};

const SENDERS: usize = 4;

#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    refused: Vec<String>,
    /// The longest a refused send waited for its answer.
    slowest_refusal: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_writer_refuses_sends_on_every_surface_and_loses_nothing() {
    let mut db = None;
    let app = spawn_app_with(|c| {
        db = Some(c.data_dir.join("confab.db"));
        c.limits.user_send_per_sec = 100_000;
        c.limits.user_send_burst = 100_000;
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
        // Only the store may answer a stuck send here, not the request timeout.
        c.http.request_timeout_secs = 120;
    })
    .await;
    let app = Arc::new(app);
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    let mut ws = app.ws(&bob, json!({})).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for w in 0..SENDERS {
        let (app, tally, stop, token) = (app.clone(), tally.clone(), stop.clone(), alice.clone());
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let key = format!("w{w}-{i}");
                i += 1;
                let started = Instant::now();
                let body = json!({"text": key, "client_msg_id": key});
                let (s, v) = app
                    .call("POST", "/api/v1/channels/g/messages", &token, Some(body))
                    .await;
                let mut t = tally.lock().unwrap();
                match s {
                    201 => t.acked.push(key),
                    503 => {
                        assert_eq!(v["error"]["code"], "unavailable", "{v}");
                        t.slowest_refusal = t.slowest_refusal.max(started.elapsed());
                        t.refused.push(key);
                    }
                    _ => panic!("send answered {s} {v}"),
                }
            }
        }));
    }
    // Some sends go through first.
    while tally.lock().unwrap().acked.len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // NIM sends between alice and bob go to their direct channel, opened now.
    assert_eq!(nim_send(&app, "nim-before").await["code"], 200);
    let lock = rusqlite::Connection::open(db.unwrap()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = Instant::now();
    wait_status(&app, "/readyz", 503).await;
    // Every surface refuses in its own format.
    let (s, v) = sendbird_send(&app, "sb-locked").await;
    assert_eq!((s, &v["error"], &v["code"]), (503, &json!(true), &json!(500901)), "{v}");
    let v = nim_send(&app, "nim-locked").await;
    assert_eq!(v["code"], 503, "{v}");
    send_json(
        &mut ws,
        json!({"type": "send", "req_id": "ws-locked", "channel_id": "g", "text": "ws-locked", "client_msg_id": "ws-locked"}),
    )
    .await;
    let f = loop {
        let f = next_json_within(&mut ws, Duration::from_secs(60)).await;
        if f["req_id"] == "ws-locked" {
            break f;
        }
    };
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{f}"
    );
    // Reads keep working.
    let (s, v) = app
        .call("GET", "/api/v1/channels/g/messages?limit=5", &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    // The native senders have been refused meanwhile, each within a bounded time.
    while tally.lock().unwrap().refused.len() < 2 * SENDERS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held_for = locked_at.elapsed();

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    wait_status(&app, "/readyz", 200).await;
    let acked_before_release = tally.lock().unwrap().acked.len();
    while tally.lock().unwrap().acked.len() < acked_before_release + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    for s in senders {
        s.await.unwrap();
    }
    let (s, v) = sendbird_send(&app, "sb-after").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(nim_send(&app, "nim-after").await["code"], 200);

    let direct = history_of(&app, &alice, "dm.alice.bob").await;
    let texts: Vec<&str> = direct.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["nim-before", "nim-after"], "the refused NIM send is not stored");
    let history = history_of(&app, &alice, "g").await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "gap-free");
    let texts: HashSet<&str> = history.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let t = tally.lock().unwrap();
    for key in t.acked.iter().map(String::as_str).chain(["sb-after"]) {
        assert!(texts.contains(key), "acknowledged message {key} lost");
    }
    for key in t.refused.iter().map(String::as_str).chain(["sb-locked", "ws-locked"]) {
        assert!(!texts.contains(key), "refused message {key} was stored");
    }
    eprintln!(
        "stuck writer: lock held {held_for:?}; {SENDERS} senders: {} acknowledged, {} refused (slowest refusal \
         {:?}); Sendbird, NIM and WebSocket refused; {} messages in history, gap-free",
        t.acked.len(),
        t.refused.len(),
        t.slowest_refusal,
        history.len()
    );
}

async fn sendbird_send(app: &TestApp, text: &str) -> (u16, Value) {
    let body = json!({"message_type": "MESG", "user_id": "alice", "message": text});
    let r = app
        .http
        .post(app.url("/v3/group_channels/g/messages"))
        .header("Api-Token", MASTER)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

async fn nim_send(app: &TestApp, text: &str) -> Value {
    let body = json!({"msg": text}).to_string();
    nim(
        app,
        "/nimserver/msg/sendMsg.action",
        &format!("from=alice&ope=0&to=bob&type=0&body={}", enc(&body)),
    )
    .await
}

async fn history_of(app: &TestApp, token: &str, channel: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map(|m| m["seq"].as_u64().unwrap()).unwrap_or(0);
        let path = format!("/api/v1/channels/{channel}/messages?after={after}&limit=200");
        let (s, r) = app.call("GET", &path, token, None).await;
        assert_eq!(s, 200, "{r}");
        let page = r["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}
